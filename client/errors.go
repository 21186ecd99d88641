package client

import (
	"errors"

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
