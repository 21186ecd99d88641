package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/imbridge/imbridge/protocol"
)

// SendOptions are the per-message options of SendMessage, as in V2TIM.
type SendOptions struct {
	// OnlineUserOnly sends an online-only message: one connected device of
	// the receiver gets it, or nobody; it is never stored.
	OnlineUserOnly bool
	// Priority is passed on with the message. Default: default.
	Priority protocol.Priority
	// ID is the client message id. Default: a fresh one that no client used
	// before (an xid). Give your own to retry a send across app restarts
	// without sending it twice: a retry of an ID already stored returns the
	// first receipt, with Duplicate set, and no error.
	ID string
}

// SendMessage sends data (any value encoding/json accepts, or a
// json.RawMessage) to the user `to`, and returns the server's receipt: status
// stored (with MsgID, Seq, InboxSeq, Time), delivered or offline (online-only),
// or dropped. A refused request returns an *Error. SendMessage blocks until
// the receipt arrives or ctx ends; if the connection drops meanwhile, it sends
// again with the same id once reconnected, and the server does not send twice.
// It also sends again when no receipt came within Config.RequestTimeout, up
// to Config.RequestRetries times, then returns ErrTimeout. On any error but
// an *Error the returned receipt has only ID set: the message may have been
// stored, and a retry with SendOptions{ID: r.ID} is never sent twice.
//
// If the server answers the first try of a message with an id the client
// generated (SendOptions.ID empty) as a duplicate, the id collided with an
// older message and this one was not sent: SendMessage returns the receipt
// and ErrDuplicateID.
func (c *Client) SendMessage(ctx context.Context, to string, data any, opts SendOptions) (protocol.Receipt, error) {
	raw, ok := data.(json.RawMessage)
	if !ok {
		b, err := json.Marshal(data)
		if err != nil {
			return protocol.Receipt{}, fmt.Errorf("client: encode data: %w", err)
		}
		raw = b
	}
	id, generated := opts.ID, opts.ID == ""
	if generated {
		id = c.newMessageID()
	}
	payload, err := json.Marshal(protocol.SendRequest{To: to, OnlineUserOnly: opts.OnlineUserOnly, Data: raw, ID: id, Priority: opts.Priority})
	if err != nil {
		return protocol.Receipt{}, err
	}
	answer, sent, err := c.exchange(ctx, protocol.SendTopic(c.cfg.User), id, payload)
	if err != nil {
		// With the id, the app can retry without sending twice.
		return protocol.Receipt{ID: id}, err
	}
	var r protocol.Receipt
	if err := json.Unmarshal(answer, &r); err != nil {
		return protocol.Receipt{ID: id}, c.undecodableAnswer(err)
	}
	if r.Status == protocol.StatusError {
		return r, serverError(r.Error)
	}
	if r.Duplicate && generated && sent == 1 {
		// Not a retry of ours: another message had this id.
		return r, fmt.Errorf("%w: %s", ErrDuplicateID, id)
	}
	if !opts.OnlineUserOnly {
		c.sent(to)
	}
	return r, nil
}

// HistoryOptions select a page of a conversation: Before or After a seq
// (exclusive), or the newest page when both are zero. Limit is 1 to 1000,
// default 50.
type HistoryOptions struct {
	Before, After uint64
	Limit         int
}

// History returns a page of the conversation with peer, oldest first, and
// whether more exists in the direction asked (Page.NextBefore/NextAfter).
// It sends the request again when no answer came within
// Config.RequestTimeout, up to Config.RequestRetries times, then returns
// ErrTimeout. Messages of the page the client cannot decode are left out
// of it and returned as *DecodeError (joined with errors.Join; test with
// errors.Is(err, ErrUndecodable)) together with the rest of the page.
func (c *Client) History(ctx context.Context, peer string, opts HistoryOptions) (protocol.Page, error) {
	answer, err := c.request(ctx, protocol.HistoryTopic(c.cfg.User), func(id string) any {
		return protocol.HistoryRequest{ID: id, With: peer, Limit: opts.Limit, Before: opts.Before, After: opts.After}
	})
	if err != nil {
		return protocol.Page{}, err
	}
	p, bad, err := decodePage(protocol.ReplyTopic(c.cfg.User), answer)
	if err != nil {
		return protocol.Page{}, c.undecodableAnswer(err)
	}
	if err := serverError(p.Error); err != nil {
		return p, err
	}
	errs := make([]error, len(bad))
	for i, b := range bad {
		c.stats.undecodable.Add(1)
		errs[i] = b
	}
	return p, errors.Join(errs...)
}
