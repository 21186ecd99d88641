package client_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imbridge/imbridge/client"
	"github.com/imbridge/imbridge/internal/testserver"
	"github.com/imbridge/imbridge/protocol"
)

// isSync reports whether a PUBLISH is an answer to a sync request.
func isSync(topic string, payload []byte) bool {
	return topic == protocol.ReplyTopic("bob") && bytes.Contains(payload, []byte(`"type":"sync"`))
}

// TestCatchUpSurvivesADroppedReply: the server drops the answer to the
// catch-up's sync request (as on a full write queue). The client asks again
// after RequestTimeout, and delivers what was stored while it was away and
// what comes live, in order.
func TestCatchUpSurvivesADroppedReply(t *testing.T) {
	n := testserver.Start(t)
	p := newProxy(t, n.MQTTAddr())
	admin := n.AdminToken()
	httpSend(t, n, admin, 1)
	httpSend(t, n, admin, 2)
	var dropped atomic.Int32
	p.setDrop(func(topic string, payload []byte) bool {
		return isSync(topic, payload) && dropped.Add(1) == 1 // the first only
	})
	bobApp := newApp()
	bob := dial(t, n, "bob", bobApp, func(c *client.Config) {
		c.Broker, c.RequestTimeout = p.URL(), 200*time.Millisecond
	})
	httpSend(t, n, admin, 3) // arrives live, beyond the hole
	bobApp.stored(t, 0, 3)
	httpSend(t, n, admin, 4)
	bobApp.stored(t, 3, 1)
	if dropped.Load() < 1 || bob.Stats().RequestTimeouts < 1 {
		t.Fatalf("no reply was dropped (%d) or timed out (%+v)", dropped.Load(), bob.Stats())
	}
}

// TestRequestTimesOut: History and SendMessage whose answers never come
// try 1+RequestRetries times and return ErrTimeout, with the id to retry a
// send with; the retry is not sent twice.
func TestRequestTimesOut(t *testing.T) {
	n := testserver.Start(t)
	p := newProxy(t, n.MQTTAddr())
	alice := dial(t, n, "alice", newApp(), func(c *client.Config) {
		c.Broker, c.RequestTimeout, c.RequestRetries = p.URL(), 100*time.Millisecond, 1
	})
	waitFor(t, "the first catch-up", func() bool { return alice.Epoch() != "" })
	var answers atomic.Int32
	p.setDrop(func(topic string, _ []byte) bool {
		if topic == protocol.ReplyTopic("alice") {
			answers.Add(1)
			return true
		}
		return false
	})
	if _, err := alice.History(t.Context(), "bob", client.HistoryOptions{}); !errors.Is(err, client.ErrTimeout) {
		t.Fatalf("History without answer: %v", err)
	}
	r, err := alice.SendMessage(t.Context(), "bob", "hi", client.SendOptions{})
	if !errors.Is(err, client.ErrTimeout) || r.ID == "" {
		t.Fatalf("send without receipt: %+v, %v", r, err)
	}
	if got := alice.Stats().RequestTimeouts; got != 4 {
		t.Fatalf("%d timeouts, want 2 tries of each request", got)
	}
	waitFor(t, "4 dropped answers", func() bool { return answers.Load() == 4 })
	p.setDrop(nil)
	again := send(t, alice, "bob", "hi", client.SendOptions{ID: r.ID})
	if again.Status != protocol.StatusStored || !again.Duplicate || again.Seq != 1 {
		t.Fatalf("retry: %+v", again)
	}
}

// TestAheadIsBounded: while the catch-up cannot complete, messages beyond a
// hole are held up to MaxAhead; the rest are fetched from the history once
// it can, and all arrive in order.
func TestAheadIsBounded(t *testing.T) {
	n := testserver.Start(t)
	p := newProxy(t, n.MQTTAddr())
	var blocked atomic.Bool
	blocked.Store(true)
	p.setDrop(func(topic string, payload []byte) bool {
		switch {
		case topic == protocol.InboxTopic("bob"):
			var m protocol.Message
			return json.Unmarshal(payload, &m) == nil && m.InboxSeq == 1 // the hole
		case isSync(topic, payload):
			return blocked.Load()
		}
		return false
	})
	bobApp := newApp()
	bob := dial(t, n, "bob", bobApp, func(c *client.Config) {
		c.Broker, c.RequestTimeout, c.MaxAhead = p.URL(), 50*time.Millisecond, 3
	})
	admin := n.AdminToken()
	for i := 1; i <= 10; i++ {
		httpSend(t, n, admin, i)
	}
	waitFor(t, "9 messages beyond the hole", func() bool {
		s := bob.Stats()
		return uint64(s.Ahead)+s.AheadDropped == 9
	})
	if s := bob.Stats(); s.Ahead != 3 || s.AheadDropped != 6 {
		t.Fatalf("stats %+v, want 3 held and 6 dropped", s)
	}
	blocked.Store(false)
	bobApp.stored(t, 0, 10)
	if s := bob.Stats(); s.Ahead != 0 {
		t.Fatalf("stats %+v after the catch-up", s)
	}
}
