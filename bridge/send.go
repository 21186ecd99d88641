package bridge

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/rs/xid"

	"github.com/imbridge/imbridge/protocol"
	"github.com/imbridge/imbridge/storage"
)

// Send sends req as user from and returns the receipt. It is the one path of
// every send: from a device over MQTT, and over HTTP. req must have passed
// protocol.DecodeSendRequest; req.From is ignored. A normal message is stored
// before Send returns; Send blocks for that commit.
func (b *Bridge) Send(ctx context.Context, from string, req protocol.SendRequest) protocol.Receipt {
	return b.send(ctx, from, req, true)
}

// send is Send, with the per-user send rate applied when limited is true
// (device and user-token sends; not admin sends).
func (b *Bridge) send(ctx context.Context, from string, req protocol.SendRequest, limited bool) protocol.Receipt {
	if limited && !b.sends.allowSend(from, req.Priority) {
		b.stats.shed.Add(1)
		b.log.Debug("send shed", "from", from, "priority", req.Priority)
		return protocol.ErrorReceipt(req.ID, &protocol.Error{Code: protocol.CodeRateLimited,
			Message: "over the send rate of " + from + "; " + string(req.Priority) + " priority sends are refused first"})
	}
	m := protocol.Message{
		ID:             xid.New().String(),
		From:           from,
		To:             req.To,
		OnlineUserOnly: req.OnlineUserOnly,
		Time:           time.Now().UnixMilli(),
		Data:           req.Data,
		ClientMsgID:    req.ID,
		Priority:       req.Priority,
	}
	if m.Priority == protocol.PriorityDefault {
		m.Priority = ""
	}
	if req.OnlineUserOnly {
		return b.sendOnline(&m)
	}
	return b.sendStored(ctx, m)
}

func (b *Bridge) sendStored(ctx context.Context, m protocol.Message) protocol.Receipt {
	a, err := b.store.Append(ctx, m)
	if err != nil {
		if !errors.Is(err, storage.ErrQuotaExceeded) {
			b.stats.storeErrors.Add(1)
		}
		code, msg := protocol.CodeStoreFailed, "message not stored: "+err.Error()
		switch {
		case errors.Is(err, storage.ErrClosed):
			code = protocol.CodeUnavailable
		case errors.Is(err, storage.ErrUnavailable):
			code, msg = protocol.CodeUnavailable, "message not stored: the history is unavailable; retry with the same id"
		case errors.Is(err, storage.ErrQuotaExceeded):
			code, msg = protocol.CodeQuota, "nothing stored: "+m.From+"'s stored messages reached the storage quota of the server"
		case errors.Is(err, context.DeadlineExceeded):
			msg = "the history did not confirm the message in time; it may still be stored: retry with the same id"
		}
		b.log.Error("store message", "error", err, "from", m.From, "to", m.To)
		return protocol.ErrorReceipt(m.ClientMsgID, &protocol.Error{Code: code, Message: msg})
	}
	if a.Duplicate {
		b.stats.duplicates.Add(1)
	} else {
		b.stats.stored.Add(1)
	}
	b.log.Debug("message stored", "id", a.Message.ID, "from", m.From, "to", m.To, "seq", a.Message.Seq, "duplicate", a.Duplicate)
	return protocol.Receipt{
		Type: "receipt", ID: m.ClientMsgID, Status: protocol.StatusStored,
		MsgID: a.Message.ID, Seq: a.Message.Seq, InboxSeq: a.FromInboxSeq, Time: a.Message.Time,
		Duplicate: a.Duplicate,
	}
}

func (b *Bridge) sendOnline(m *protocol.Message) protocol.Receipt {
	if m.ClientMsgID == "" {
		return b.routeOnlineReceipt(m)
	}
	r, dup := b.onlineSeen.once(m.From+"\x00"+m.ClientMsgID, func() protocol.Receipt { return b.routeOnlineReceipt(m) })
	if dup {
		b.stats.duplicates.Add(1)
		r.Duplicate = true
	}
	return r
}

// routeOnlineReceipt routes an online-only message and returns its receipt:
// to a connected device of the receiver on this node if there is one, or
// else, through the Router, to one on another node.
func (b *Bridge) routeOnlineReceipt(m *protocol.Message) protocol.Receipt {
	payload := protocol.AppendMessage(make([]byte, 0, 192+len(m.Data)), m)
	route, err := b.routeOnline(m.To, m.ID, payload)
	if err == nil && !route.picked {
		route, err = b.routeElsewhere(m.To, payload)
	}
	r := protocol.Receipt{Type: "receipt", ID: m.ClientMsgID, MsgID: m.ID, Time: m.Time}
	switch {
	case errors.Is(err, errRouting):
		b.stats.unroutable.Add(1)
		b.logs.info("online-only message not routed", "from", m.From, "to", m.To, "error", err)
		return protocol.ErrorReceipt(m.ClientMsgID, &protocol.Error{Code: protocol.CodeUnavailable,
			Message: "not delivered: " + err.Error() + "; send it again"})
	case err != nil:
		return protocol.ErrorReceipt(m.ClientMsgID, &protocol.Error{Code: protocol.CodeInternal, Message: err.Error()})
	case !route.picked:
		b.stats.offline.Add(1)
		r.Status = protocol.StatusOffline
	case route.dropped:
		b.stats.onlineDropped.Add(1)
		r.Status = protocol.StatusDropped
	default:
		b.stats.delivered.Add(1)
		r.Status = protocol.StatusDelivered
	}
	b.log.Debug("online-only message routed", "id", m.ID, "from", m.From, "to", m.To, "status", r.Status)
	return r
}

// errRouting marks a failure to ask the other nodes (no answer in time, or
// no connection to them): the message was not delivered, as far as this node
// knows, and may be sent again.
var errRouting = errors.New("the other nodes could not be asked")

// routeElsewhere routes an encoded online-only message through the Router
// to a connected device of user on another node, with one request.
func (b *Bridge) routeElsewhere(user string, payload []byte) (onlineRoute, error) {
	ctx, cancel := context.WithTimeout(context.Background(), routeTimeout)
	defer cancel()
	out, err := b.router.Online(ctx, user, payload)
	switch {
	case errors.Is(err, ErrNoDevice):
		return onlineRoute{}, nil
	case err != nil:
		return onlineRoute{}, fmt.Errorf("%w: %v", errRouting, err)
	}
	return onlineRoute{picked: out != Offline, dropped: out == Dropped}, nil
}
