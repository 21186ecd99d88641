package client_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/imbridge/imbridge/client"
	"github.com/imbridge/imbridge/internal/testserver"
	"github.com/imbridge/imbridge/protocol"
	"github.com/imbridge/imbridge/server"
	"github.com/imbridge/imbridge/storage"
)

const wait = 10 * time.Second

// TestMain checks that closed clients (and the test nodes) leave no
// goroutine behind.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// app records what a client hands to the app.
type app struct {
	msgs   chan protocol.Message
	typing chan string // "peer:true" / "peer:false"
	conn   chan bool
}

func newApp() *app {
	return &app{msgs: make(chan protocol.Message, 1000), typing: make(chan string, 100), conn: make(chan bool, 100)}
}

func dial(t *testing.T, n *testserver.Node, user string, a *app, edit ...func(*client.Config)) *client.Client {
	t.Helper()
	cfg := client.Config{
		Broker: n.MQTTURL(), User: user, Token: n.Token(user),
		OnMessage:    func(m protocol.Message) { a.msgs <- m },
		OnTyping:     func(peer string, on bool) { a.typing <- fmt.Sprintf("%s:%v", peer, on) },
		OnConnection: func(up bool) { a.conn <- up },
	}
	for _, e := range edit {
		e(&cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	c, err := client.Dial(ctx, cfg)
	if err != nil {
		t.Fatalf("dial %s: %v", user, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func (a *app) next(t *testing.T) protocol.Message {
	t.Helper()
	select {
	case m := <-a.msgs:
		return m
	case <-time.After(wait):
		t.Fatal("no message")
	}
	return protocol.Message{}
}

func (a *app) expectTyping(t *testing.T, want string) {
	t.Helper()
	select {
	case got := <-a.typing:
		if got != want {
			t.Fatalf("typing event %q, want %q", got, want)
		}
	case <-time.After(wait):
		t.Fatalf("no typing event, want %q", want)
	}
}

// stored reads n stored messages and checks they come in inboxSeq order
// from after+1, with no repeats.
func (a *app) stored(t *testing.T, after uint64, n int) []protocol.Message {
	t.Helper()
	var out []protocol.Message
	for len(out) < n {
		m := a.next(t)
		if m.OnlineUserOnly {
			continue
		}
		if m.InboxSeq != after+uint64(len(out))+1 {
			t.Fatalf("inboxSeq %d after %d messages from %d: not in order or repeated", m.InboxSeq, len(out), after)
		}
		out = append(out, m)
	}
	return out
}

// waitFor polls cond until it holds, failing the test after the deadline.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond) // polling a condition
	}
}

func send(t *testing.T, c *client.Client, to string, data any, o client.SendOptions) protocol.Receipt {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	r, err := c.SendMessage(ctx, to, data, o)
	if err != nil {
		t.Fatalf("send: %v", err)
	}
	return r
}

func TestSendAndReceiveBothKinds(t *testing.T) {
	n := testserver.Start(t)
	aliceApp, aliceWebApp, bobApp := newApp(), newApp(), newApp()
	alice := dial(t, n, "alice", aliceApp)
	dial(t, n, "alice", aliceWebApp)
	dial(t, n, "bob", bobApp)

	r := send(t, alice, "bob", map[string]string{"text": "hi"}, client.SendOptions{ID: "m1", Priority: protocol.PriorityHigh})
	if r.Status != protocol.StatusStored || r.Seq != 1 || r.ID != "m1" || r.MsgID == "" {
		t.Fatalf("receipt %+v", r)
	}
	if m := bobApp.stored(t, 0, 1)[0]; m.From != "alice" || string(m.Data) != `{"text":"hi"}` || m.Priority != protocol.PriorityHigh {
		t.Fatalf("bob got %+v", m)
	}
	// alice's own send, as her other device and the sending one see it.
	for _, a := range []*app{aliceApp, aliceWebApp} {
		if m := a.stored(t, 0, 1)[0]; m.From != "alice" || m.To != "bob" || m.ClientMsgID != "m1" {
			t.Fatalf("alice's copy %+v", m)
		}
	}

	r = send(t, alice, "bob", "ping", client.SendOptions{OnlineUserOnly: true})
	if r.Status != protocol.StatusDelivered {
		t.Fatalf("online receipt %+v", r)
	}
	if m := bobApp.next(t); !m.OnlineUserOnly || string(m.Data) != `"ping"` {
		t.Fatalf("bob got %+v", m)
	}
	if r := send(t, alice, "nobody", "ping", client.SendOptions{OnlineUserOnly: true}); r.Status != protocol.StatusOffline {
		t.Fatalf("offline receipt %+v", r)
	}
}

func TestSendErrors(t *testing.T) {
	n := testserver.Start(t)
	alice := dial(t, n, "alice", newApp())
	_, err := alice.SendMessage(context.Background(), "not/a/user", "x", client.SendOptions{})
	var e *client.Error
	if !errors.As(err, &e) || e.Code != protocol.CodeInvalidTo {
		t.Fatalf("err = %v, want *Error invalid_to", err)
	}
	if _, err := alice.SendMessage(context.Background(), "bob", func() {}, client.SendOptions{}); err == nil {
		t.Fatal("unencodable data accepted")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := alice.SendMessage(ctx, "bob", "x", client.SendOptions{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled ctx: %v", err)
	}
	alice.Close()
	if _, err := alice.SendMessage(context.Background(), "bob", "x", client.SendOptions{}); !errors.Is(err, client.ErrClosed) {
		t.Fatalf("after Close: %v", err)
	}
	_, err = client.Dial(context.Background(), client.Config{Broker: n.MQTTURL(), User: "alice", Token: n.Token("bob")})
	if !errors.Is(err, client.ErrNotAuthorized) {
		t.Fatalf("wrong token: %v", err)
	}
	if _, err := client.Dial(context.Background(), client.Config{Broker: n.MQTTURL(), User: "a b", Token: "x"}); err == nil {
		t.Fatal("invalid user accepted")
	}
}

// TestExactlyOnceAcrossServerRestart: messages sent while the client is cut
// off by a server restart reach it after it reconnects, once each and in
// order, followed by live ones.
func TestExactlyOnceAcrossServerRestart(t *testing.T) {
	n := testserver.Start(t)
	bobApp := newApp()
	var tokenCalls sync.WaitGroup
	tokenCalls.Add(2) // the first connect and one reconnect at least
	var once sync.Map
	dial(t, n, "bob", bobApp, func(c *client.Config) {
		c.Token = ""
		calls := 0
		c.TokenFunc = func() (string, error) {
			calls++
			if _, loaded := once.LoadOrStore(calls, true); !loaded && calls <= 2 {
				tokenCalls.Done()
			}
			return n.Token("bob"), nil
		}
		c.MaxReconnectInterval = 200 * time.Millisecond
	})
	<-bobApp.conn
	admin := n.AdminToken()
	httpSend(t, n, admin, 1)
	bobApp.stored(t, 0, 1)

	n.Restart()
	for i := 2; i <= 6; i++ { // while bob is away
		httpSend(t, n, admin, i)
	}
	if up := <-bobApp.conn; up {
		t.Fatal("expected the connection loss first")
	}
	tokenCalls.Wait() // the reconnect asked for a fresh token
	got := bobApp.stored(t, 1, 5)
	for i, m := range got {
		if string(m.Data) != fmt.Sprint(i+2) {
			t.Fatalf("message %d: %s", i, m.Data)
		}
	}
	httpSend(t, n, admin, 7)
	bobApp.stored(t, 6, 1)
}

// TestPersistentSessionResumesExactlyOnce: a persistent device comes back
// with its saved InboxSeq; what the server's session queue resends and what
// the catch-up returns overlap, and the app sees each message once.
func TestPersistentSessionResumesExactlyOnce(t *testing.T) {
	n := testserver.Start(t)
	persistent := func(c *client.Config) { c.Persistent, c.DeviceID = true, "phone" }
	a1 := newApp()
	bob := dial(t, n, "bob", a1, persistent)
	httpSend(t, n, n.AdminToken(), 1)
	a1.stored(t, 0, 1)
	seq, epoch := bob.InboxSeq(), bob.Epoch()
	if seq != 1 || epoch == "" {
		t.Fatalf("InboxSeq %d epoch %q", seq, epoch)
	}
	bob.Close()
	for i := 2; i <= 4; i++ {
		httpSend(t, n, n.AdminToken(), i)
	}
	a2 := newApp()
	dial(t, n, "bob", a2, persistent, func(c *client.Config) { c.InboxSeq, c.Epoch = seq, epoch })
	a2.stored(t, 1, 3)
	httpSend(t, n, n.AdminToken(), 5)
	a2.stored(t, 4, 1)
	select {
	case m := <-a2.msgs:
		t.Fatalf("extra message %+v", m)
	default:
	}
}

func TestTyping(t *testing.T) {
	n := testserver.Start(t)
	bobApp := newApp()
	fast := func(c *client.Config) { c.TypingTimeout = 300 * time.Millisecond }
	alice := dial(t, n, "alice", newApp(), fast)
	dial(t, n, "bob", bobApp, fast)
	typist := alice.Typist("bob")

	for range 20 {
		typist.Keystroke()
	}
	bobApp.expectTyping(t, "alice:true")
	bobApp.expectTyping(t, "alice:false") // expired on its own
	if got := n.Health().Bridge.Delivered; got != 1 {
		t.Fatalf("%d indicators sent for 20 keystrokes within the interval, want 1", got)
	}

	typist.Stop() // indicator already went out: the stop is sent too
	typist.Keystroke()
	bobApp.expectTyping(t, "alice:true")
	typist.Stop()
	bobApp.expectTyping(t, "alice:false")

	typist.Keystroke()
	bobApp.expectTyping(t, "alice:true")
	send(t, alice, "bob", "done typing", client.SendOptions{})
	bobApp.expectTyping(t, "alice:false") // cleared by the message
	if m := bobApp.stored(t, 0, 1)[0]; string(m.Data) != `"done typing"` {
		t.Fatalf("got %+v", m)
	}
	for m := range len(bobApp.msgs) {
		_ = m
		if got := <-bobApp.msgs; got.OnlineUserOnly {
			t.Fatalf("a typing indicator reached OnMessage: %+v", got)
		}
	}
}

func TestHistory(t *testing.T) {
	n := testserver.Start(t)
	alice := dial(t, n, "alice", newApp())
	for i := 1; i <= 5; i++ {
		send(t, alice, "bob", i, client.SendOptions{})
	}
	p, err := alice.History(context.Background(), "bob", client.HistoryOptions{Limit: 2})
	if err != nil || len(p.Messages) != 2 || p.Messages[0].Seq != 4 || !p.More || p.NextBefore != 4 {
		t.Fatalf("newest page %+v %v", p, err)
	}
	p, err = alice.History(context.Background(), "bob", client.HistoryOptions{Before: p.NextBefore, Limit: 10})
	if err != nil || len(p.Messages) != 3 || p.More {
		t.Fatalf("older page %+v %v", p, err)
	}
	_, err = alice.History(context.Background(), "b/b", client.HistoryOptions{})
	var e *client.Error
	if !errors.As(err, &e) || e.Code != protocol.CodeInvalidQuery {
		t.Fatalf("bad peer: %v", err)
	}
}

// TestWebSocket: the SDK over ws://, both kinds.
func TestWebSocket(t *testing.T) {
	n := testserver.Start(t)
	bobApp := newApp()
	dial(t, n, "bob", bobApp, func(c *client.Config) { c.Broker = n.WSURL() })
	alice := dial(t, n, "alice", newApp(), func(c *client.Config) { c.Broker = n.WSURL() })
	if r := send(t, alice, "bob", "over ws", client.SendOptions{}); r.Status != protocol.StatusStored {
		t.Fatalf("receipt %+v", r)
	}
	bobApp.stored(t, 0, 1)
	if r := send(t, alice, "bob", "ping", client.SendOptions{OnlineUserOnly: true}); r.Status != protocol.StatusDelivered {
		t.Fatalf("receipt %+v", r)
	}
	if m := bobApp.next(t); !m.OnlineUserOnly {
		t.Fatalf("got %+v", m)
	}
}

// TestCatchUpAfterPruning: when the server's retention pruned old messages,
// a device catching up skips them instead of waiting for them forever.
func TestCatchUpAfterPruning(t *testing.T) {
	n := testserver.Start(t, func(c *server.Config) {
		c.Retention, c.PruneInterval = storage.Retention{MaxCount: 3}, 20*time.Millisecond
		c.Limits.SendRate = -1
	})
	admin := n.AdminToken()
	for i := 1; i <= 6; i++ {
		httpSend(t, n, admin, i)
	}
	waitFor(t, "pruning", func() bool { return n.Health().Bridge.Pruned >= 3 })
	bobApp := newApp()
	bob := dial(t, n, "bob", bobApp)
	if got := bobApp.stored(t, 3, 3); string(got[0].Data) != "4" {
		t.Fatalf("first message after pruning: %s", got[0].Data)
	}
	httpSend(t, n, admin, 7)
	bobApp.stored(t, 6, 1)
	if bob.InboxSeq() != 7 {
		t.Fatalf("InboxSeq %d", bob.InboxSeq())
	}
}
