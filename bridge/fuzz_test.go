package bridge

import (
	"net/url"
	"strings"
	"testing"

	"github.com/imbridge/imbridge/protocol"
)

// FuzzACL checks the access rules against any user and topic or filter:
// whatever is allowed lies in that user's own namespace, and nothing is
// allowed to two different users.
func FuzzACL(f *testing.F) {
	for _, s := range []string{"users/alice/inbox", "$share/alice/users/alice/online", "users/alice/reply/#", "users/+/inbox", "#", "users/alice/send", "users/alice/reply/\x01"} {
		f.Add("alice", s)
	}
	f.Fuzz(func(t *testing.T, user, topic string) {
		if !protocol.ValidUserID(user) {
			if mayPublish(user, topic) && user == "" {
				t.Fatal("empty user may publish")
			}
			return
		}
		own := "users/" + user + "/"
		if maySubscribe(user, topic) && !strings.HasPrefix(topic, own) && topic != protocol.OnlineFilter(user) {
			t.Fatalf("%s may subscribe to %q outside its namespace", user, topic)
		}
		for _, allowed := range []bool{mayPublish(user, topic), mayReceive(user, topic)} {
			if allowed && !strings.HasPrefix(topic, own) {
				t.Fatalf("%s may use %q outside its namespace", user, topic)
			}
		}
		if strings.ContainsAny(topic, "+#") && (mayPublish(user, topic) || mayReceive(user, topic)) {
			t.Fatalf("a wildcard topic %q allowed as a topic name", topic)
		}
		other := user + "x"
		if (maySubscribe(user, topic) && maySubscribe(other, topic)) || (mayReceive(user, topic) && mayReceive(other, topic)) {
			t.Fatalf("%q allowed to both %s and %s", topic, user, other)
		}
	})
}

// FuzzPageQuery parses HTTP history and sync query strings as the handlers
// do: any string gives a request within limits or a precise error.
func FuzzPageQuery(f *testing.F) {
	for _, s := range []string{"with=bob&limit=50", "with=bob&before=9&after=3", "after=18446744073709551616", "limit=-1", "with=%00&limit=1000", "limit=1e3"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		q, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		h := protocol.HistoryRequest{With: q.Get("with")}
		perr := parseUints(q, map[string]*uint64{"before": &h.Before, "after": &h.After})
		if perr == nil {
			perr = parseLimit(q, &h.Limit)
		}
		if perr == nil {
			perr = h.Check()
		}
		if perr != nil {
			if perr.Code == "" || perr.Message == "" {
				t.Fatalf("error without code or message: %+v", perr)
			}
			return
		}
		if !protocol.ValidUserID(h.With) || h.Limit < 1 || h.Limit > protocol.MaxPageLimit || (h.Before != 0 && h.After != 0) {
			t.Fatalf("accepted %q as %+v", raw, h)
		}
	})
}
