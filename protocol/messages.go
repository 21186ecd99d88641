package protocol

import (
	"bytes"
	"encoding/json"
	"strconv"
)

// Priority is a message's priority, as in V2TIM. The empty value means
// "default".
type Priority string

// The priorities a send request may name.
const (
	PriorityDefault Priority = "default"
	PriorityHigh    Priority = "high"
	PriorityNormal  Priority = "normal"
	PriorityLow     Priority = "low"
)

func (p Priority) valid() bool {
	switch p {
	case "", PriorityDefault, PriorityHigh, PriorityNormal, PriorityLow:
		return true
	}
	return false
}

// SendRequest is what a device publishes to its send topic, and what the HTTP
// send API takes. Unknown fields are ignored.
type SendRequest struct {
	To             string          `json:"to"`
	OnlineUserOnly bool            `json:"onlineUserOnly,omitempty"`
	Data           json.RawMessage `json:"data"`
	ID             string          `json:"id,omitempty"`       // client-chosen, for receipts and retries
	Priority       Priority        `json:"priority,omitempty"` // default when empty
	// From names the sender. Devices never set it: the server takes the sender
	// from the authenticated connection and ignores this field. Only the HTTP
	// send API with an admin token uses it.
	From string `json:"from,omitempty"`
}

// Message is a delivered message, and an entry of the history. The server
// encodes it with "id" as the first member (see [PeekMessageID]).
type Message struct {
	ID             string          `json:"id"`   // server-assigned, unique
	From           string          `json:"from"` // the authenticated sender
	To             string          `json:"to"`
	OnlineUserOnly bool            `json:"onlineUserOnly"`
	Time           int64           `json:"time"` // server time, Unix milliseconds
	Data           json.RawMessage `json:"data"`
	ClientMsgID    string          `json:"clientMsgId,omitempty"` // the request's id, when it had one
	Priority       Priority        `json:"priority,omitempty"`
	// Seq orders the conversation of From and To: 1, 2, 3, ... without holes.
	// Zero for online-only messages.
	Seq uint64 `json:"seq,omitempty"`
	// InboxSeq orders everything stored for the receiving user (whose inbox it
	// arrived on): 1, 2, 3, ... without holes, across all conversations. A
	// device that sees InboxSeq jump has missed messages and fills the hole
	// with a sync. Zero for online-only messages and in conversation history.
	InboxSeq uint64 `json:"inboxSeq,omitempty"`
}

// Status is the outcome a receipt reports.
type Status string

// The outcomes of a send.
const (
	StatusStored    Status = "stored"    // in the history; delivered to every device of both users
	StatusDelivered Status = "delivered" // online-only, handed to one connected device
	StatusOffline   Status = "offline"   // online-only, the receiver had no connected device: dropped
	StatusDropped   Status = "dropped"   // online-only, the chosen device's queue was full: dropped
	StatusError     Status = "error"     // see Error
)

// Receipt tells a sender the outcome of one send request.
type Receipt struct {
	Type      string `json:"type"`         // always "receipt"
	ID        string `json:"id,omitempty"` // the request's id
	Status    Status `json:"status"`
	MsgID     string `json:"msgId,omitempty"`     // the server message id
	Seq       uint64 `json:"seq,omitempty"`       // stored: the conversation seq
	InboxSeq  uint64 `json:"inboxSeq,omitempty"`  // stored: the seq in the sender's own inbox
	Time      int64  `json:"time,omitempty"`      // server time of the message, Unix ms
	Duplicate bool   `json:"duplicate,omitempty"` // a retry of an id already handled; nothing was sent again
	Error     *Error `json:"error,omitempty"`
}

// ErrorReceipt returns a receipt of status error.
func ErrorReceipt(id string, err *Error) Receipt {
	return Receipt{Type: "receipt", ID: id, Status: StatusError, Error: err}
}

// HistoryRequest asks for a page of the conversation with a peer. Before and
// After are conversation seqs, exclusive; with neither, the newest page.
type HistoryRequest struct {
	ID     string `json:"id,omitempty"`
	With   string `json:"with"`
	Limit  int    `json:"limit,omitempty"`
	Before uint64 `json:"before,omitempty"`
	After  uint64 `json:"after,omitempty"`
}

// SyncRequest asks for the user's stored messages with InboxSeq above After,
// oldest first.
type SyncRequest struct {
	ID    string `json:"id,omitempty"`
	After uint64 `json:"after"`
	Limit int    `json:"limit,omitempty"`
}

// Page is the answer to a history or sync request. Messages are in ascending
// seq (history) or inboxSeq (sync) order.
type Page struct {
	Type     string    `json:"type"` // "history" or "sync"
	ID       string    `json:"id,omitempty"`
	Messages []Message `json:"messages"`
	// Epoch identifies the history store. If it differs from the epoch a
	// device saw before, the store was reset and its cursors are void.
	Epoch string `json:"epoch,omitempty"`
	// More says that another page exists in the direction of the request;
	// NextBefore or NextAfter is the cursor to ask for it.
	More       bool   `json:"more"`
	NextBefore uint64 `json:"nextBefore,omitempty"`
	NextAfter  uint64 `json:"nextAfter,omitempty"`
	Error      *Error `json:"error,omitempty"`
}

// Limits of history and sync pages.
const (
	DefaultPageLimit = 50
	MaxPageLimit     = 1000
)

// DecodeSendRequest parses and checks a send request. It returns an *Error
// with a precise code for anything a sender must fix. The returned request's
// Data is a copy. Priority is normalised to PriorityDefault when empty.
func DecodeSendRequest(b []byte) (SendRequest, *Error) {
	var r SendRequest
	if err := decodeObject(b, &r); err != nil {
		return r, err
	}
	if r.ID != "" && !ValidClientMsgID(r.ID) {
		return r, errorf(CodeInvalidID, "id must be 1 to 128 characters of A-Z a-z 0-9 . _ @ - :")
	}
	if r.To == "" {
		return r, errorf(CodeInvalidTo, "to is required")
	}
	if !ValidUserID(r.To) {
		return r, errorf(CodeInvalidTo, "to must be a user ID: 1 to 64 characters of A-Z a-z 0-9 . _ @ -")
	}
	if len(r.Data) == 0 || bytes.Equal(r.Data, []byte("null")) {
		return r, errorf(CodeMissingData, "data is required and must not be null")
	}
	if !r.Priority.valid() {
		return r, errorf(CodeInvalidPriority, "priority must be one of default, high, normal, low")
	}
	if r.Priority == "" {
		r.Priority = PriorityDefault
	}
	return r, nil
}

// DecodeHistoryRequest parses and checks a history request, filling in the
// default limit.
func DecodeHistoryRequest(b []byte) (HistoryRequest, *Error) {
	var r HistoryRequest
	if err := decodeObject(b, &r); err != nil {
		return r, err
	}
	return r, r.Check()
}

// Check validates a history request and fills in the default limit.
func (r *HistoryRequest) Check() *Error {
	if r.ID != "" && !ValidClientMsgID(r.ID) {
		return errorf(CodeInvalidID, "id must be 1 to 128 characters of A-Z a-z 0-9 . _ @ - :")
	}
	if !ValidUserID(r.With) {
		return errorf(CodeInvalidQuery, "with must be a user ID")
	}
	if r.Before != 0 && r.After != 0 {
		return errorf(CodeInvalidQuery, "give before or after, not both")
	}
	return checkLimit(&r.Limit)
}

// DecodeSyncRequest parses and checks a sync request, filling in the default
// limit.
func DecodeSyncRequest(b []byte) (SyncRequest, *Error) {
	var r SyncRequest
	if err := decodeObject(b, &r); err != nil {
		return r, err
	}
	return r, r.Check()
}

// Check validates a sync request and fills in the default limit.
func (r *SyncRequest) Check() *Error {
	if r.ID != "" && !ValidClientMsgID(r.ID) {
		return errorf(CodeInvalidID, "id must be 1 to 128 characters of A-Z a-z 0-9 . _ @ - :")
	}
	return checkLimit(&r.Limit)
}

func checkLimit(limit *int) *Error {
	if *limit == 0 {
		*limit = DefaultPageLimit
	}
	if *limit < 1 || *limit > MaxPageLimit {
		return errorf(CodeInvalidQuery, "limit must be 1 to "+strconv.Itoa(MaxPageLimit))
	}
	return nil
}

// decodeObject unmarshals a JSON object into v, telling apart invalid JSON,
// JSON that is not an object, and fields of the wrong type.
func decodeObject(b []byte, v any) *Error {
	t := bytes.TrimLeft(b, " \t\r\n")
	if len(t) == 0 {
		return errorf(CodeBadJSON, "empty payload")
	}
	if !json.Valid(t) {
		return errorf(CodeBadJSON, "payload is not valid JSON")
	}
	if t[0] != '{' {
		return errorf(CodeNotObject, "payload must be a JSON object")
	}
	if err := json.Unmarshal(t, v); err != nil {
		return errorf(CodeBadJSON, err.Error())
	}
	return nil
}

// PeekMessageID returns the id of an encoded [Message] without decoding it,
// relying on the server's encoding, which writes "id" first. It reports false
// for anything else.
func PeekMessageID(payload []byte) ([]byte, bool) {
	const prefix = `{"id":"`
	if !bytes.HasPrefix(payload, []byte(prefix)) {
		return nil, false
	}
	rest := payload[len(prefix):]
	end := bytes.IndexByte(rest, '"')
	if end <= 0 {
		return nil, false
	}
	return rest[:end], true
}
