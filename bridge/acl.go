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
	return ok && rest != "" && validClientID(rest)
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
func (b *Bridge) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	user := userOf(cl)
	if write {
		return mayPublish(user, topic)
	}
	return mayReceive(user, topic) || maySubscribe(user, topic)
}

// OnSubscribe refuses, filter by filter, what maySubscribe does not allow,
// and new filters beyond Config.MaxSubscriptions per session. Deciding here,
// where filters are told apart from topic names, is what keeps a plain
// "users/U/online" subscription out: it would get every online-only message,
// not one device's share.
func (b *Bridge) OnSubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	user := userOf(cl)
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
	return pk
}
