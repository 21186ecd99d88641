package bridge

import (
	"context"
	"encoding/json"
	"hash/fnv"
	"strconv"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/imbridge/imbridge/protocol"
)

// MQTT 5 PUBACK reason codes the bridge uses beyond mochi's own.
var (
	codeNoSubscribers = packets.Code{Code: 0x10, Reason: "receiver offline: online-only message dropped"}
	codeBadPayload    = packets.Code{Code: 0x99}
	codeBadReplyTopic = packets.Code{Code: 0x83, Reason: "response topic must be users/U/reply or under it"}
	codeStoreFailed   = packets.Code{Code: 0x80, Reason: "message not stored"}
	codeQuota         = packets.Code{Code: 0x97}
)

// OnPublish handles a device's request: a send, a history or a sync request.
// It answers on the reply topic and returns the PUBACK's outcome to mochi.
// Requests are never routed as plain MQTT messages and never retained.
func (b *Bridge) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline {
		return pk, nil
	}
	user := userOf(cl)
	topicUser, kind := protocol.ParseTopic(pk.TopicName)
	if user == "" || topicUser != user {
		return pk, packets.ErrRejectPacket // OnACLCheck refuses these first
	}
	b.touch(cl.ID)
	replyTo, replyOK := b.replyTopic(cl, user, pk)

	var perr *protocol.Error
	switch {
	case !replyOK:
		perr = &protocol.Error{Code: protocol.CodeInvalidTopic, Message: codeBadReplyTopic.Reason}
	case len(pk.Payload) > b.cfg.MaxPayload:
		perr = &protocol.Error{Code: protocol.CodeTooLarge, Message: "payload is larger than the limit of " + strconv.Itoa(b.cfg.MaxPayload) + " bytes"}
	}

	switch kind {
	case protocol.TopicSend:
		var receipt protocol.Receipt
		var req protocol.SendRequest
		if perr == nil {
			if req, perr = protocol.DecodeSendRequest(pk.Payload); perr == nil {
				ctx, cancel := context.WithTimeout(context.Background(), b.cfg.SendTimeout)
				receipt = b.Send(ctx, user, req)
				cancel()
			}
		}
		if perr != nil {
			receipt = protocol.ErrorReceipt(peekRequestID(pk.Payload), perr)
		}
		return b.finishSend(cl, pk, replyTo, receipt, req.OnlineUserOnly)
	case protocol.TopicHistory, protocol.TopicSync:
		var page protocol.Page
		if perr == nil && !b.allowQuery(user) {
			perr = errQueryRate
		}
		if perr == nil {
			page = b.query(user, kind, pk.Payload)
		} else {
			page = protocol.Page{Type: kindName(kind), ID: peekRequestID(pk.Payload), Error: perr}
		}
		b.reply(cl, replyTo, pk, page)
		if page.Error != nil {
			if c := page.Error.Code; c != protocol.CodeStoreFailed && c != protocol.CodeUnavailable && c != protocol.CodeRateLimited {
				b.reject(c)
			}
			return pk, ackError(cl, pk, page.Error)
		}
		return pk, packets.CodeSuccessIgnore
	}
	return pk, packets.ErrRejectPacket
}

// finishSend publishes the receipt where it is due and returns the PUBACK
// outcome. A receipt is published for every error, and for a success when the
// request had an id or an MQTT 5 response topic.
func (b *Bridge) finishSend(cl *mqtt.Client, pk packets.Packet, replyTo string, r protocol.Receipt, online bool) (packets.Packet, error) {
	if r.Status == protocol.StatusError || r.ID != "" || pk.Properties.ResponseTopic != "" {
		b.reply(cl, replyTo, pk, r)
	}
	switch r.Status {
	case protocol.StatusStored, protocol.StatusDelivered:
		return pk, packets.CodeSuccessIgnore
	case protocol.StatusOffline, protocol.StatusDropped:
		if cl.Properties.ProtocolVersion == 5 && pk.FixedHeader.Qos > 0 {
			return pk, codeNoSubscribers
		}
		return pk, packets.CodeSuccessIgnore
	}
	c := r.Error.Code
	// An online-only message is never stored, and is not worth a
	// reconnection: its sender learns from the receipt alone.
	notStored := !online && (c == protocol.CodeStoreFailed || c == protocol.CodeUnavailable || c == protocol.CodeRateLimited)
	if notStored && cl.Properties.ProtocolVersion < 5 && pk.FixedHeader.Qos > 0 {
		// MQTT 3.1.1 has no negative PUBACK, and a plain client takes a
		// PUBACK for "stored". Withhold it and close the connection: the
		// client resends the message when it reconnects.
		b.log.Warn("closing MQTT 3.1.1 connection: send not stored", "client", cl.ID, "reason", c)
		cl.Stop(packets.ErrUnspecifiedError)
		return pk, packets.ErrRejectPacket
	}
	if c != protocol.CodeStoreFailed && c != protocol.CodeUnavailable && c != protocol.CodeRateLimited {
		b.reject(c)
	}
	return pk, ackError(cl, pk, r.Error)
}

// ackError returns the PUBACK outcome of a refused request: an MQTT 5 reason
// code when there is a PUBACK to carry it, else a plain acknowledgement (the
// error travels in the receipt).
func ackError(cl *mqtt.Client, pk packets.Packet, e *protocol.Error) error {
	if cl.Properties.ProtocolVersion < 5 || pk.FixedHeader.Qos == 0 {
		return packets.CodeSuccessIgnore
	}
	switch e.Code {
	case protocol.CodeInvalidTopic:
		return codeBadReplyTopic
	case protocol.CodeStoreFailed, protocol.CodeUnavailable, protocol.CodeInternal:
		c := codeStoreFailed
		c.Reason = e.Message
		return c
	case protocol.CodeRateLimited, protocol.CodeQuota:
		c := codeQuota
		c.Reason = e.Message
		return c
	}
	c := codeBadPayload
	c.Reason = e.Message
	return c
}

func (b *Bridge) query(user string, kind protocol.TopicKind, payload []byte) protocol.Page {
	if kind == protocol.TopicHistory {
		req, perr := protocol.DecodeHistoryRequest(payload)
		if perr != nil {
			return protocol.Page{Type: "history", ID: req.ID, Error: perr}
		}
		return b.History(user, req)
	}
	req, perr := protocol.DecodeSyncRequest(payload)
	if perr != nil {
		return protocol.Page{Type: "sync", ID: req.ID, Error: perr}
	}
	return b.Sync(user, req)
}

// replyTopic returns where the answer to pk goes: its MQTT 5 response topic,
// which must be one of user's reply topics, else users/U/reply. ok is false
// for a response topic outside them; the answer then goes to users/U/reply.
func (b *Bridge) replyTopic(cl *mqtt.Client, user string, pk packets.Packet) (topic string, ok bool) {
	rt := pk.Properties.ResponseTopic
	if rt == "" || cl.Properties.ProtocolVersion < 5 {
		return protocol.ReplyTopic(user), true
	}
	if !protocol.ValidReplyTopic(user, rt) {
		return protocol.ReplyTopic(user), false
	}
	return rt, true
}

// reply publishes v as JSON on topic to the device that asked, cl, and to
// no other: a receipt or a page concerns one request, and queueing it for
// every session of the user (offline ones included) would let one user make
// the server hold any number of pages. It goes at QoS 0 (nothing is held
// for a device that is gone: it asks again; requests are idempotent by id),
// echoing the request's MQTT 5 correlation data, through mochi's queue of
// cl, so that it keeps its place among the deliveries to cl.
//
// OnACLCheck admits the delivery to cl only: reply publishes to one topic
// take turns, and askers holds the client ID each is for.
func (b *Bridge) reply(cl *mqtt.Client, topic string, req packets.Packet, v any) {
	payload, err := json.Marshal(v)
	if err == nil {
		h := fnv.New32a()
		h.Write([]byte(topic))
		mu := &b.replyTurns[h.Sum32()%uint32(len(b.replyTurns))]
		mu.Lock()
		b.askers.Store(topic, cl.ID)
		err = b.publish(topic, payload, 0, packets.Properties{CorrelationData: req.Properties.CorrelationData})
		b.askers.Delete(topic)
		mu.Unlock()
	}
	if err != nil {
		b.log.Error("publish reply", "error", err, "topic", topic)
	}
}

// peekRequestID returns the "id" of a request that failed to decode, when
// the payload is at least a JSON object with a valid string id.
func peekRequestID(payload []byte) string {
	var v struct {
		ID any `json:"id"`
	}
	if json.Unmarshal(payload, &v) != nil {
		return ""
	}
	if s, ok := v.ID.(string); ok && protocol.ValidClientMsgID(s) {
		return s
	}
	return ""
}

func kindName(k protocol.TopicKind) string {
	if k == protocol.TopicHistory {
		return "history"
	}
	return "sync"
}
