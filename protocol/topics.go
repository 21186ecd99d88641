package protocol

import "strings"

// TopicKind says which of a user's topics a topic name is.
type TopicKind uint8

// The kinds of per-user topic. TopicUnknown is any topic outside the users/
// namespace or not one of these.
const (
	TopicUnknown TopicKind = iota
	TopicSend              // users/U/send: send requests from U's devices
	TopicInbox             // users/U/inbox: stored messages to and from U
	TopicOnline            // users/U/online: online-only messages to U
	TopicReply             // users/U/reply and users/U/reply/...: receipts and pages for U
	TopicHistory           // users/U/history: history requests from U's devices
	TopicSync              // users/U/sync: inbox sync requests from U's devices
)

const usersPrefix = "users/"

// SendTopic returns "users/U/send".
func SendTopic(user string) string { return usersPrefix + user + "/send" }

// InboxTopic returns "users/U/inbox".
func InboxTopic(user string) string { return usersPrefix + user + "/inbox" }

// OnlineTopic returns "users/U/online", the topic the server publishes
// online-only messages to.
func OnlineTopic(user string) string { return usersPrefix + user + "/online" }

// OnlineFilter returns "$share/U/users/U/online", the only filter through which
// a device may receive online-only messages.
func OnlineFilter(user string) string { return "$share/" + user + "/" + OnlineTopic(user) }

// ReplyTopic returns "users/U/reply", where receipts and history pages go when
// the request named no MQTT 5 response topic.
func ReplyTopic(user string) string { return usersPrefix + user + "/reply" }

// HistoryTopic returns "users/U/history".
func HistoryTopic(user string) string { return usersPrefix + user + "/history" }

// SyncTopic returns "users/U/sync".
func SyncTopic(user string) string { return usersPrefix + user + "/sync" }

// ParseTopic splits a topic name of the users/ namespace into its user and
// kind. It returns TopicUnknown for anything else, including wildcards and
// invalid user IDs. "users/U/reply/anything" is TopicReply.
func ParseTopic(topic string) (user string, kind TopicKind) {
	rest, ok := strings.CutPrefix(topic, usersPrefix)
	if !ok {
		return "", TopicUnknown
	}
	slash := strings.IndexByte(rest, '/')
	if slash < 0 {
		return "", TopicUnknown
	}
	user, leaf := rest[:slash], rest[slash+1:]
	if !ValidUserID(user) {
		return "", TopicUnknown
	}
	switch leaf {
	case "send":
		return user, TopicSend
	case "inbox":
		return user, TopicInbox
	case "online":
		return user, TopicOnline
	case "reply":
		return user, TopicReply
	case "history":
		return user, TopicHistory
	case "sync":
		return user, TopicSync
	}
	if sub, ok := strings.CutPrefix(leaf, "reply/"); ok && validReplySuffix(sub) {
		return user, TopicReply
	}
	return "", TopicUnknown
}

// Limits of reply topics (MQTT 5 response topics) and of the filters that
// subscribe to them: users/U/reply/ may be followed by at most
// MaxReplyLevels levels, and the whole topic or filter is at most
// MaxTopicLen bytes. Deeper or longer ones are refused before the broker
// indexes anything.
const (
	MaxReplyLevels = 4
	MaxTopicLen    = 256
)

// validReplySuffix accepts the part of a reply topic after "reply/": at least
// one byte, no wildcard, no control character, at most MaxReplyLevels levels
// and MaxTopicLen bytes.
func validReplySuffix(s string) bool {
	if s == "" || len(s) > MaxTopicLen || strings.Count(s, "/") >= MaxReplyLevels {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c == '+' || c == '#' || c < 0x20 || c == 0x7f {
			return false
		}
	}
	return true
}

// ValidReplyTopic reports whether topic is one of user's reply topics, the
// only places an MQTT 5 response topic may point to.
func ValidReplyTopic(user, topic string) bool {
	u, kind := ParseTopic(topic)
	return kind == TopicReply && u == user
}
