package client_test

import (
	"errors"
	"testing"

	"github.com/imbridge/imbridge/client"
	"github.com/imbridge/imbridge/internal/testserver"
	"github.com/imbridge/imbridge/protocol"
)

// TestNewMessageAfterRestartIsNotADuplicate: an app restarted with the same
// DeviceID (as the docs recommend) sends a new message without an id; it is
// stored and delivered, not answered as a duplicate of the first run's.
func TestNewMessageAfterRestartIsNotADuplicate(t *testing.T) {
	n := testserver.Start(t)
	bobApp := newApp()
	dial(t, n, "bob", bobApp)
	phone := func(c *client.Config) { c.DeviceID = "phone" }
	for run, text := range []string{"first run", "second run"} {
		alice := dial(t, n, "alice", newApp(), phone)
		// The first catch-up is the first request of both runs; the old
		// ids came from a counter, in request order.
		waitFor(t, "the first catch-up", func() bool { return alice.Epoch() != "" })
		r := send(t, alice, "bob", text, client.SendOptions{})
		if r.Status != protocol.StatusStored || r.Duplicate || r.Seq != uint64(run+1) {
			t.Fatalf("run %d: receipt %+v", run+1, r)
		}
		if m := bobApp.stored(t, uint64(run), 1)[0]; string(m.Data) != `"`+text+`"` {
			t.Fatalf("run %d: bob got %s", run+1, m.Data)
		}
		alice.Close()
	}
}

// TestGeneratedIDCollisionIsAnError: if an id the SDK generated comes back
// duplicate on the first try, the message was not sent and SendMessage says
// so; a caller's own id that comes back duplicate is a successful retry.
func TestGeneratedIDCollisionIsAnError(t *testing.T) {
	n := testserver.Start(t)
	same := func(c *client.Config) { client.SetIDGenerator(c, func() string { return "always-the-same" }) }
	alice := dial(t, n, "alice", newApp(), same)
	send(t, alice, "bob", "one", client.SendOptions{})
	r, err := alice.SendMessage(t.Context(), "bob", "two", client.SendOptions{})
	if !errors.Is(err, client.ErrDuplicateID) || !r.Duplicate {
		t.Fatalf("colliding generated id: receipt %+v, err %v; want ErrDuplicateID", r, err)
	}

	first := send(t, alice, "bob", "three", client.SendOptions{ID: "mine"})
	r = send(t, alice, "bob", "three", client.SendOptions{ID: "mine"})
	if !r.Duplicate || r.MsgID != first.MsgID {
		t.Fatalf("retry with the caller's id: %+v, first %+v", r, first)
	}
}
