package cluster_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/imbridge/imbridge/internal/poll"
	"github.com/imbridge/imbridge/internal/testdevice"
	"github.com/imbridge/imbridge/internal/testnats"
	"github.com/imbridge/imbridge/internal/testpg"
	"github.com/imbridge/imbridge/internal/testserver"
	"github.com/imbridge/imbridge/protocol"
	"github.com/imbridge/imbridge/server"
	"github.com/imbridge/imbridge/storage"
	"github.com/imbridge/imbridge/storage/postgres"
)

// v3 and v5 connect a test device of each MQTT version to a node.
var v3, v5 = testserver.V3, testserver.V5

type (
	dev  = testdevice.Device
	opts = testdevice.Options
)

// nodes starts n nodes joined through ns, named a, b, c, ..., each with a
// history file of its own (these tests are about routing; the history of a
// cluster is PostgreSQL's, tested with it), and waits until each has heard
// of all the others.
func nodes(t *testing.T, ns *testnats.Server, n int, edit ...func(*server.Config)) []*testserver.Node {
	t.Helper()
	var out []*testserver.Node
	for i := range n {
		name := string(rune('a' + i))
		out = append(out, testserver.Start(t, append([]func(*server.Config){func(c *server.Config) {
			c.NATS = []string{ns.URL()}
			c.Node = name
		}}, edit...)...))
	}
	for _, node := range out {
		poll.For(t, poll.Total, poll.Interval, func() error {
			if h := node.Health(); h.Cluster == nil || len(h.Cluster.Peers) != n-1 {
				return fmt.Errorf("node %s: cluster %+v", h.Node, h.Cluster)
			}
			return nil
		})
	}
	return out
}

// waitInterest waits until some node serves subject, asking NATS directly:
// a node takes a user's subjects a moment after the device connected.
func waitInterest(t *testing.T, ns *testnats.Server, subject string) {
	t.Helper()
	nc, err := nats.Connect(ns.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	poll.For(t, poll.Total, poll.Interval, func() error {
		_, err := nc.Request(subject, []byte("{}"), time.Second) // no message id: answered "offline"
		if errors.Is(err, nats.ErrNoResponders) {
			return fmt.Errorf("nobody serves %s", subject)
		}
		return err
	})
}

func send(t *testing.T, d *dev, req string) protocol.Receipt {
	t.Helper()
	d.Send(req)
	return d.Expect(protocol.ReplyTopic(d.User)).Receipt(t)
}

// TestOnlineOnlyAcrossNodes: an online-only message reaches exactly one
// connected device of the receiver wherever it is connected; the receipt
// says delivered only when one got it, and offline when none is connected.
func TestOnlineOnlyAcrossNodes(t *testing.T) {
	ns := testnats.Start(t)
	n := nodes(t, ns, 3)
	alice := v3(t, n[0], "alice", opts{ClientID: "phone"})

	if r := send(t, alice, `{"to":"bob","onlineUserOnly":true,"data":"typing","id":"t-0"}`); r.Status != protocol.StatusOffline {
		t.Fatalf("bob has no device: receipt %+v", r)
	}

	bobB := v3(t, n[1], "bob", opts{ClientID: "phone"})
	bobC := v5(t, n[2], "bob", opts{ClientID: "tablet"})
	waitInterest(t, ns, "imbridge.online.bob")
	const sends = 20
	for i := range sends {
		r := send(t, alice, fmt.Sprintf(`{"to":"bob","onlineUserOnly":true,"data":"typing","id":"t-%d"}`, i+1))
		if r.Status != protocol.StatusDelivered {
			t.Fatalf("send %d: receipt %+v", i+1, r)
		}
	}
	got := len(bobB.Barrier()) + len(bobC.Barrier())
	if got != sends {
		t.Fatalf("bob's devices got %d messages in all, want exactly %d", got, sends)
	}

	// A device of bob on alice's node is preferred: no hop.
	bobA := v3(t, n[0], "bob", opts{ClientID: "laptop"})
	r := send(t, alice, `{"to":"bob","onlineUserOnly":true,"data":"typing","id":"t-local"}`)
	if r.Status != protocol.StatusDelivered {
		t.Fatalf("receipt %+v", r)
	}
	if m := bobA.Expect(protocol.OnlineTopic("bob")).Message(t); m.ClientMsgID != "t-local" {
		t.Fatalf("bob's laptop got %+v", m)
	}
	bobB.ExpectQuiet()
	bobC.ExpectQuiet()

	// All of bob's devices gone: offline again, once the nodes have seen it.
	for _, d := range []*dev{bobA, bobB, bobC} {
		d.Close()
	}
	try := 0
	poll.For(t, poll.Total, poll.Interval, func() error {
		try++
		if r := send(t, alice, fmt.Sprintf(`{"to":"bob","onlineUserOnly":true,"data":"typing","id":"gone-%d"}`, try)); r.Status != protocol.StatusOffline {
			return fmt.Errorf("receipt %+v", r)
		}
		return nil
	})
}

// TestStoredAcrossNodes: a stored message reaches every device of the
// receiver and the sender's other devices, on every node, with its inboxSeq.
func TestStoredAcrossNodes(t *testing.T) {
	ns := testnats.Start(t)
	n := nodes(t, ns, 3)
	alicePhone := v3(t, n[0], "alice", opts{ClientID: "phone"})
	aliceWeb := v5(t, n[2], "alice", opts{ClientID: "web"})
	bobPhone := v3(t, n[1], "bob", opts{ClientID: "phone"})
	bobTablet := v5(t, n[2], "bob", opts{ClientID: "tablet"})
	waitInterest(t, ns, "imbridge.online.bob")
	waitInterest(t, ns, "imbridge.online.alice")

	const sends = 10
	for i := range sends {
		if r := send(t, alicePhone, fmt.Sprintf(`{"to":"bob","data":%d,"id":"s-%d"}`, i, i)); r.Status != protocol.StatusStored {
			t.Fatalf("receipt %+v", r)
		}
	}
	for _, d := range []*dev{bobPhone, bobTablet, aliceWeb, alicePhone} {
		for i := range sends {
			m := d.Expect(protocol.InboxTopic(d.User)).Message(t)
			if m.ClientMsgID != fmt.Sprintf("s-%d", i) || m.InboxSeq != uint64(i+1) {
				t.Fatalf("%s/%s: message %d is %+v", d.User, d.ClientID, i, m)
			}
		}
		d.ExpectQuiet()
	}
}

// onPostgres keeps a node's history in the PostgreSQL database at dsn.
func onPostgres(dsn string) func(*server.Config) {
	return func(c *server.Config) {
		c.OpenStore = func(o *storage.Options) (storage.Store, error) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			return postgres.Open(ctx, dsn, o)
		}
	}
}

// TestConcurrentSendersOnAllNodes: three nodes on one PostgreSQL; senders on
// every node write to bob at once, whose devices sit on every node. Each of
// bob's devices gets every message once, and together their inboxSeqs are
// exactly 1..N; every conversation's seqs are 1..n in both users' views.
func TestConcurrentSendersOnAllNodes(t *testing.T) {
	dsn := testpg.Start(t).NewDB(t)
	ns := testnats.Start(t)
	n := nodes(t, ns, 3, onPostgres(dsn))
	var bobs []*dev
	for i, node := range n {
		bobs = append(bobs, v3(t, node, "bob", opts{ClientID: fmt.Sprint("bob-", i)}))
	}
	waitInterest(t, ns, "imbridge.online.bob")
	const each = 30
	var senders sync.WaitGroup
	for i, node := range n {
		user := fmt.Sprint("s", i)
		d := v5(t, node, user, opts{ClientID: "phone"})
		senders.Go(func() {
			for j := range each {
				d.Send(fmt.Sprintf(`{"to":"bob","data":%d,"id":"%s-%d"}`, j, user, j))
			}
		})
	}
	senders.Wait() // every send acknowledged: committed
	const total = 3 * each
	for _, b := range bobs {
		seen := map[uint64]bool{}
		conv := map[string]uint64{}
		for range total {
			m := b.Expect(protocol.InboxTopic("bob")).Message(t)
			if seen[m.InboxSeq] || m.InboxSeq < 1 || m.InboxSeq > total {
				t.Fatalf("%s: inboxSeq %d again or out of 1..%d", b.ClientID, m.InboxSeq, total)
			}
			seen[m.InboxSeq] = true
			if m.Seq <= conv[m.From] {
				t.Fatalf("%s: conversation with %s: seq %d after %d", b.ClientID, m.From, m.Seq, conv[m.From])
			}
			conv[m.From] = m.Seq
		}
		for from, last := range conv {
			if last != each {
				t.Fatalf("%s: conversation with %s ends at seq %d, want %d", b.ClientID, from, last, each)
			}
		}
		b.ExpectQuiet()
	}
}

// TestTakeoverAcrossNodes: a client ID that connects to another node takes
// its session over: the old connection is closed, and the old node forgets
// the session.
func TestTakeoverAcrossNodes(t *testing.T) {
	ns := testnats.Start(t)
	n := nodes(t, ns, 2)
	for name, connect := range map[string]func(testing.TB, *testserver.Node, string, opts) *dev{"3.1.1": v3, "5": v5} {
		t.Run(name, func(t *testing.T) {
			id := "phone-" + name
			old := connect(t, n[0], "carol", opts{ClientID: id})
			waitInterest(t, ns, "imbridge.online.carol")
			start := time.Now()
			fresh := connect(t, n[1], "carol", opts{ClientID: id})
			poll.For(t, poll.Total, poll.Interval, func() error {
				if old.Connected() {
					return errors.New("the old connection is still open")
				}
				return nil
			})
			t.Logf("old connection closed %v after the new CONNECT", time.Since(start))
			poll.For(t, poll.Total, poll.Interval, func() error {
				if c := n[0].Health().Clients; c != 0 {
					return fmt.Errorf("old node still has %d clients", c)
				}
				if n[0].Server.Bridge().HasSession("carol/" + id) {
					return errors.New("old node still holds the session")
				}
				return nil
			})
			if !fresh.Connected() {
				t.Fatal("the new connection was closed")
			}
			fresh.Close()
		})
	}
}

// TestDeviceLimitAcrossNodes: MaxDevicesPerUser counts a user's sessions
// on all nodes.
func TestDeviceLimitAcrossNodes(t *testing.T) {
	ns := testnats.Start(t)
	n := nodes(t, ns, 3, func(c *server.Config) { c.Limits.MaxDevicesPerUser = 2 })
	v3(t, n[0], "dave", opts{ClientID: "one"})
	v5(t, n[1], "dave", opts{ClientID: "two"})
	_, err := testdevice.DialV3(t, n[2].MQTTURL(), "dave", opts{ClientID: "three", Token: n[2].Token})
	if err == nil {
		t.Fatal("a third device of dave connected; the limit is 2 across nodes")
	}
	// Taking over one of the two sessions from the third node is allowed.
	v3(t, n[2], "dave", opts{ClientID: "one"})
}

// TestNATSRestart: while NATS is down, online-only sends to a device on
// another node get offline or an error receipt, never a false delivered;
// once NATS is back, routing resumes by itself.
func TestNATSRestart(t *testing.T) {
	ns := testnats.Start(t)
	n := nodes(t, ns, 2)
	alice := v3(t, n[0], "alice", opts{ClientID: "phone"})
	bob := v3(t, n[1], "bob", opts{ClientID: "phone"})
	waitInterest(t, ns, "imbridge.online.bob")

	ns.Stop()
	poll.For(t, poll.Total, poll.Interval, func() error {
		if h := n[0].Health(); h.Status != "degraded" || h.Cluster.Connected {
			return fmt.Errorf("health %s, cluster %+v", h.Status, h.Cluster)
		}
		return nil
	})
	for i := range 3 {
		r := send(t, alice, fmt.Sprintf(`{"to":"bob","onlineUserOnly":true,"data":"typing","id":"down-%d"}`, i))
		if r.Status == protocol.StatusDelivered {
			t.Fatalf("delivered while NATS is down: %+v", r)
		}
		t.Logf("while NATS is down: %s %v", r.Status, r.Error)
	}
	ns.Restart()
	try := 0
	poll.For(t, poll.Total, poll.Interval, func() error {
		try++
		r := send(t, alice, fmt.Sprintf(`{"to":"bob","onlineUserOnly":true,"data":"typing","id":"up-%d"}`, try))
		if r.Status != protocol.StatusDelivered {
			return fmt.Errorf("after the restart: %+v", r)
		}
		return nil
	})
	got := bob.Barrier()
	if len(got) != 1 {
		t.Fatalf("bob got %d messages, want 1 (the one delivered after the restart)", len(got))
	}
	if h := n[0].Health(); h.Status != "ok" || !slices.Equal(h.Cluster.Peers, []string{"b"}) {
		t.Fatalf("health after the restart: %s %+v", h.Status, h.Cluster)
	}
	resp, err := http.Get("http://" + n[0].HTTPAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`imbridge_node_info{node="a"} 1`, "imbridge_cluster_connected 1", "imbridge_cluster_peers 1"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}
