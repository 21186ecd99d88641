package protocol

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"strconv"
	"unicode/utf8"
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
	if perr := checkData(r.Data); perr != nil {
		return r, perr
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
	switch {
	case len(t) == 0:
		return errorf(CodeBadJSON, "empty payload")
	case t[0] != '{' && json.Valid(t):
		return errorf(CodeNotObject, "payload must be a JSON object")
	case t[0] != '{':
		return errorf(CodeBadJSON, "payload is not valid JSON")
	}
	// Unmarshal checks the whole input before it decodes: one pass.
	if err := json.Unmarshal(t, v); err != nil {
		var syntax *json.SyntaxError
		var typ *json.UnmarshalTypeError
		switch {
		case errors.As(err, &syntax):
			return errorf(CodeBadJSON, "payload is not valid JSON: "+syntax.Error())
		case errors.As(err, &typ) && typ.Field != "":
			return errorf(CodeBadJSON, typ.Field+" must be "+jsonKind(typ.Type.Kind())+", not "+typ.Value)
		}
		return errorf(CodeBadJSON, "payload does not match the request's fields")
	}
	return nil
}

// jsonKind names the JSON type a Go kind decodes from.
func jsonKind(k reflect.Kind) string {
	switch k {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int64, reflect.Uint64:
		return "a non-negative integer"
	}
	return "another type"
}

// MaxDataDepth is how deeply arrays and objects may nest in a message's
// data: {"a":[1]} has depth 2. Receivers decode data with ordinary JSON
// libraries, and some of them refuse (or recurse on the stack through) deep
// input, so one message could otherwise break a receiver's every page.
const MaxDataDepth = 64

// checkData refuses data that is not valid UTF-8 or nests deeper than
// MaxDataDepth. data must be valid JSON.
func checkData(data []byte) *Error {
	if !utf8.Valid(data) {
		return errorf(CodeInvalidData, "data must be valid UTF-8")
	}
	if DataDepth(data) > MaxDataDepth {
		return errorf(CodeInvalidData, "data nests arrays and objects deeper than "+strconv.Itoa(MaxDataDepth)+" levels")
	}
	return nil
}

// DataDepth returns how deeply arrays and objects nest in the valid JSON
// value v, without decoding it.
func DataDepth(v []byte) int {
	depth, max, inString := 0, 0, false
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch {
		case inString && c == '\\':
			i++ // the escaped byte
		case c == '"':
			inString = !inString
		case inString:
		case c == '[' || c == '{':
			if depth++; depth > max {
				max = depth
			}
		case c == ']' || c == '}':
			depth--
		}
	}
	return max
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

// WithUint returns a copy of the encoded JSON object obj with the member
// "name": n appended. obj must be a JSON object as encoding/json writes it
// (ending in '}'), and must not have the member already. It lets the server
// encode a message once and add the seq and inboxSeq it learns later.
func WithUint(obj []byte, name string, n uint64) []byte {
	out := make([]byte, 0, len(obj)+len(name)+24)
	out = append(out, obj[:len(obj)-1]...)
	if len(obj) > 2 {
		out = append(out, ',')
	}
	out = append(out, '"')
	out = append(out, name...)
	out = append(out, '"', ':')
	out = strconv.AppendUint(out, n, 10)
	return append(out, '}')
}

// AppendMessage appends the JSON encoding of m to dst, as json.Marshal would
// write it (same members, same order, "id" first) but for data, which is
// copied as it is and so must be valid JSON (DecodeSendRequest ensures it).
// It is the server's encoder for the messages it delivers.
func AppendMessage(dst []byte, m *Message) []byte {
	dst = append(dst, `{"id":`...)
	dst = appendString(dst, m.ID)
	dst = append(dst, `,"from":`...)
	dst = appendString(dst, m.From)
	dst = append(dst, `,"to":`...)
	dst = appendString(dst, m.To)
	dst = append(dst, `,"onlineUserOnly":`...)
	dst = strconv.AppendBool(dst, m.OnlineUserOnly)
	dst = append(dst, `,"time":`...)
	dst = strconv.AppendInt(dst, m.Time, 10)
	dst = append(dst, `,"data":`...)
	if len(m.Data) == 0 {
		dst = append(dst, "null"...)
	} else {
		dst = append(dst, m.Data...)
	}
	if m.ClientMsgID != "" {
		dst = append(dst, `,"clientMsgId":`...)
		dst = appendString(dst, m.ClientMsgID)
	}
	if m.Priority != "" {
		dst = append(dst, `,"priority":`...)
		dst = appendString(dst, string(m.Priority))
	}
	if m.Seq != 0 {
		dst = append(dst, `,"seq":`...)
		dst = strconv.AppendUint(dst, m.Seq, 10)
	}
	if m.InboxSeq != 0 {
		dst = append(dst, `,"inboxSeq":`...)
		dst = strconv.AppendUint(dst, m.InboxSeq, 10)
	}
	return append(dst, '}')
}

// appendString appends s as a JSON string. IDs need no escaping; anything
// else goes through encoding/json.
func appendString(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == '"' || c == '\\' || c >= 0x7f || c == '<' || c == '>' || c == '&' {
			b, _ := json.Marshal(s)
			return append(dst, b...)
		}
	}
	dst = append(dst, '"')
	dst = append(dst, s...)
	return append(dst, '"')
}
