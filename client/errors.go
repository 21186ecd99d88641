package client

import (
	"errors"
	"fmt"

	"github.com/imbridge/imbridge/protocol"
)

// Errors of the client itself.
var (
	// ErrClosed is returned by calls on, or waiting in, a closed Client.
	ErrClosed = errors.New("client: closed")
	// ErrNotAuthorized means the server refused the credentials at connect.
	ErrNotAuthorized = errors.New("client: not authorized")
	// ErrTimeout is returned by a request that got no answer to any of its
	// tries (Config.RequestTimeout, Config.RequestRetries). A send may have
	// been stored even so: retry it with the same SendOptions.ID to be sure.
	ErrTimeout = errors.New("client: no answer from the server")
)

// Errors of a send.
var (
	// ErrDuplicateID means the server took a message id the client generated
	// for a retry of an older message, so the new message was not sent. The
	// client's ids never repeat, so this needs a broken clock or random
	// source; send again.
	ErrDuplicateID = errors.New("client: generated message id already used; message not sent")
)

// Errors of decoding.
var (
	// ErrUndecodable matches every *DecodeError.
	ErrUndecodable = errors.New("client: undecodable")
)

// DecodeError reports a message or an answer of the server that the client
// could not decode, with what of it could be read. It matches
// ErrUndecodable.
type DecodeError struct {
	Topic string // where it arrived
	// MsgID, Seq and InboxSeq are the message's server id, conversation seq
	// and inboxSeq, when they could be read; zero otherwise.
	MsgID          string
	Seq, InboxSeq  uint64
	OnlineUserOnly bool
	Err            error // the decoder's error
}

// Error returns "client: undecodable ...".
func (e *DecodeError) Error() string {
	s := "client: undecodable message or answer on " + e.Topic
	if e.InboxSeq != 0 {
		s += fmt.Sprintf(" (inboxSeq %d, id %s)", e.InboxSeq, e.MsgID)
	}
	return s + ": " + e.Err.Error()
}

// Unwrap returns the decoder's error.
func (e *DecodeError) Unwrap() error { return e.Err }

// Is reports whether target is ErrUndecodable.
func (e *DecodeError) Is(target error) bool { return target == ErrUndecodable }

// Error is an error the server reported for a request: a receipt or page
// with status error. Test its Code, or use errors.As.
type Error struct {
	Code    protocol.ErrorCode
	Message string
}

// Error returns "client: server: CODE: MESSAGE".
func (e *Error) Error() string { return "client: server: " + string(e.Code) + ": " + e.Message }

func serverError(e *protocol.Error) error {
	if e == nil {
		return nil
	}
	return &Error{Code: e.Code, Message: e.Message}
}
