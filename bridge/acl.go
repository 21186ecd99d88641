package bridge

import (
	"strings"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/imbridge/imbridge/protocol"
)

// deniedFilter replaces every subscription filter that OnSubscribe refuses.
// It is a valid filter that no ACL check admits, so mochi answers it with
// "not authorized".
const deniedFilter = "$imbridge/denied"

// mayPublish reports whether user may publish to topic: only to their own
// send, history and sync topics.
func mayPublish(user, topic string) bool {
	u, kind := protocol.ParseTopic(topic)
	if user == "" || u != user {
		return false
	}
	return kind == protocol.TopicSend || kind == protocol.TopicHistory || kind == protocol.TopicSync
}

// maySubscribe reports whether user may subscribe to filter: their inbox,
// their shared online filter (with the group named after them), their reply
// topic, and filters under their reply topic.
func maySubscribe(user, filter string) bool {
	if user == "" {
		return false
	}
	switch filter {
	case protocol.InboxTopic(user), protocol.OnlineFilter(user), protocol.ReplyTopic(user):
		return true
	}
	rest, ok := strings.CutPrefix(filter, protocol.ReplyTopic(user)+"/")
	return ok && rest != "" && len(filter) <= protocol.MaxTopicLen &&
		strings.Count(rest, "/") < protocol.MaxReplyLevels && validClientID(rest)
}

// mayReceive reports whether a delivery on topic may go to user's device:
// their inbox, online and reply topics.
func mayReceive(user, topic string) bool {
	u, kind := protocol.ParseTopic(topic)
	if user == "" || u != user {
		return false
	}
	return kind == protocol.TopicInbox || kind == protocol.TopicOnline || kind == protocol.TopicReply
}

// OnACLCheck decides publishes (write) and, for reads, deliveries and the
// subscription filters that OnSubscribe let through. Deliveries, checked
// once per message and device, take the allocation-free path first.
//
// A stored-message delivery that would take the session over
// Config.MaxSessionBytes is refused here too (mochi then skips that one
// device): the fan-out goroutine is the only publisher to inbox topics, and
// it sets fanoutSize to the payload size before each publish.
func (b *Bridge) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	user := userOf(cl)
	if write {
		return mayPublish(user, topic)
	}
	if !mayReceive(user, topic) {
		return maySubscribe(user, topic)
	}
	inbox := strings.HasSuffix(topic, "/inbox")
	if !inbox && !strings.HasSuffix(topic, "/online") {
		// A reply topic: only the device that asked gets the answer.
		asker, ok := b.askers.Load(topic)
		if !ok || asker == cl.ID {
			return true
		}
		d := b.deviceOf(cl)
		return d != nil && d.subscribing.Load() // a SUBSCRIBE's filter, not a delivery
	}
	if !inbox {
		return true
	}
	d := b.deviceOf(cl)
	if d == nil || d.subscribing.Load() {
		return true // a SUBSCRIBE's filter, not a delivery
	}
	// A stored-message delivery, on runFanout's goroutine.
	if only := b.delivery.only; only != "" && only != cl.ID {
		return false // a held-back message, for one session only
	}
	if d.client != cl || !d.established.Load() || b.waitsFor(cl.ID) {
		// The session is being taken over or its CONNACK is not written
		// yet, or older messages wait for it: hold this one back too.
		if !b.holdBack(cl.ID, b.delivery.payload) {
			b.stats.budgetDrops.Add(1)
		}
		return false
	}
	if size := b.fanoutSize.Load(); d.held.Load()+size > b.cfg.MaxSessionBytes {
		d.reconcile(cl) // mochi may have rolled back deliveries without a hook
		if d.held.Load()+size > b.cfg.MaxSessionBytes {
			b.stats.budgetDrops.Add(1)
			return false
		}
	}
	return true
}

// OnSubscribe refuses, filter by filter, what maySubscribe does not allow,
// and new filters beyond Config.MaxSubscriptions per session. Deciding here,
// where filters are told apart from topic names, is what keeps a plain
// "users/U/online" subscription out: it would get every online-only message,
// not one device's share.
//
// OnSubscribe also works around mochi v2.7.9 answering 0x91 (packet
// identifier in use) when a SUBSCRIBE's packet id equals that of a delivery
// in flight to the client (the two directions' ids are separate spaces in
// MQTT): it renumbers such a SUBSCRIBE to id 0, which no delivery uses, and
// OnPacketEncode puts the client's id back on the SUBACK.
func (b *Bridge) OnSubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	user := userOf(cl)
	b.renumber(cl, &pk)
	held := cl.State.Subscriptions.Len()
	for i := range pk.Filters {
		f := pk.Filters[i].Filter
		_, existing := cl.State.Subscriptions.Get(f)
		switch {
		case !maySubscribe(user, f):
			b.log.Debug("subscription refused", "client", cl.ID, "filter", f)
			pk.Filters[i].Filter = deniedFilter
		case !existing && held >= b.cfg.MaxSubscriptions:
			b.log.Debug("subscription refused: limit reached", "client", cl.ID, "filter", f, "limit", b.cfg.MaxSubscriptions)
			pk.Filters[i].Filter = deniedFilter
		case !existing:
			held++
		}
	}
	b.touch(cl.ID)
	if d := b.deviceOf(cl); d != nil {
		d.subscribing.Store(true) // until OnSubscribed
	}
	return pk
}

// OnUnsubscribe lets a session unsubscribe only filters it holds: any other
// filter is answered 0x11 (no subscription existed), whoever else holds it,
// so that UNSUBSCRIBE tells nothing about other sessions and no counter
// moves. A filter the session does not hold costs mochi no topic-index walk.
func (b *Bridge) OnUnsubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	b.renumber(cl, &pk)
	for i := range pk.Filters {
		if _, held := cl.State.Subscriptions.Get(pk.Filters[i].Filter); !held {
			pk.Filters[i].Filter = deniedFilter
		}
	}
	return pk
}

// renumber gives a SUBSCRIBE or UNSUBSCRIBE whose packet id mochi would take
// for one in use (see OnSubscribe) the id 0, remembering the client's.
func (b *Bridge) renumber(cl *mqtt.Client, pk *packets.Packet) {
	if _, clash := cl.State.Inflight.Get(pk.PacketID); !clash {
		return
	}
	if d := b.deviceOf(cl); d != nil {
		d.subackID.Store(uint32(pk.PacketID) + 1)
		pk.PacketID = 0
	}
}

// OnSubscribed ends what OnSubscribe started.
func (b *Bridge) OnSubscribed(cl *mqtt.Client, pk packets.Packet, reasonCodes []byte) {
	if d := b.deviceOf(cl); d != nil {
		d.subscribing.Store(false)
	}
}
