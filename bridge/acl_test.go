package bridge

import (
	"log/slog"
	"testing"
)

func TestACL(t *testing.T) {
	type want struct{ pub, sub, recv bool }
	for _, tc := range []struct {
		topic string
		w     want
	}{
		{"users/alice/send", want{pub: true}},
		{"users/alice/history", want{pub: true}},
		{"users/alice/sync", want{pub: true}},
		{"users/alice/inbox", want{sub: true, recv: true}},
		{"users/alice/online", want{recv: true}}, // delivered, never subscribed plainly
		{"$share/alice/users/alice/online", want{sub: true}},
		{"users/alice/reply", want{sub: true, recv: true}},
		{"users/alice/reply/web", want{sub: true, recv: true}},
		{"users/alice/reply/#", want{sub: true}},
		{"users/alice/reply/+", want{sub: true}},
		{"users/alice/reply/", want{}},
		{"$share/bob/users/alice/online", want{}},
		{"$share/alice/users/bob/online", want{}},
		{"$share/alice/users/alice/inbox", want{}},
		{"users/bob/send", want{}},
		{"users/bob/inbox", want{}},
		{"users/bob/online", want{}},
		{"users/bob/reply", want{}},
		{"users/alice/#", want{}},
		{"users/+/inbox", want{}},
		{"#", want{}},
		{"$SYS/broker/clients", want{}},
		{deniedFilter, want{}},
		{"", want{}},
	} {
		got := want{mayPublish("alice", tc.topic), maySubscribe("alice", tc.topic), mayReceive("alice", tc.topic)}
		if got != tc.w {
			t.Errorf("%q: publish/subscribe/receive = %+v, want %+v", tc.topic, got, tc.w)
		}
		// The inline client and unauthenticated clients have no user: nothing.
		if mayPublish("", tc.topic) || maySubscribe("", tc.topic) || mayReceive("", tc.topic) {
			t.Errorf("%q allowed for no user", tc.topic)
		}
	}
}

func BenchmarkDeliveryACL(b *testing.B) {
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if !mayReceive("alice", "users/alice/inbox") {
			b.Fatal("denied")
		}
	}
}

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }
