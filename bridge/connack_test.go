package bridge_test

import (
	"bufio"
	"net"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/imbridge/imbridge/auth"
	"github.com/imbridge/imbridge/bridge"
	"github.com/imbridge/imbridge/internal/testdevice"
	"github.com/imbridge/imbridge/protocol"
)

// connackGate is a test hook that holds the CONNACK of one client until
// released: it opens, deterministically, the window in which mochi v2.7.9
// has added a resuming client to its client map but not yet written its
// CONNACK.
type connackGate struct {
	mqtt.HookBase
	client  string
	reached chan struct{} // closed when the CONNACK is held
	release chan struct{} // close to let it go
	armed   atomic.Bool
}

func (g *connackGate) ID() string { return "connack-gate" }
func (g *connackGate) Provides(b byte) bool {
	return b == mqtt.OnPacketEncode
}
func (g *connackGate) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if pk.FixedHeader.Type == packets.Connack && cl.ID == g.client && g.armed.CompareAndSwap(true, false) {
		close(g.reached)
		select {
		case <-g.release:
		case <-time.After(testdevice.Wait):
		}
	}
	return pk
}

// TestNoPublishBeforeConnack: a stored message committed while a resuming
// session's CONNACK is not yet written reaches the device after the CONNACK
// [MQTT-3.2.0-1], not before it and not never.
func TestNoPublishBeforeConnack(t *testing.T) {
	secret := []byte("0123456789abcdef0123456789abcdef")
	srv := mqtt.New(&mqtt.Options{InlineClient: true})
	gate := &connackGate{client: "bob/phone", reached: make(chan struct{}), release: make(chan struct{})}
	if err := srv.AddHook(gate, nil); err != nil {
		t.Fatal(err)
	}
	b, err := bridge.Open(srv, bridge.Config{DBPath: filepath.Join(t.TempDir(), "h.db"), Secret: secret})
	if err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	if err := srv.AddListener(listeners.NewTCP(listeners.Config{ID: "t", Address: addr})); err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close(); b.Close() })
	token := func(u string) string { tk, _ := auth.Mint(secret, u, time.Hour); return tk }
	connect := func(user, id string) *testdevice.Raw {
		return testdevice.RawConnect(t, addr, 4, packets.ConnectParams{ClientIdentifier: id, Username: []byte(user), Password: []byte(token(user))})
	}

	bob := connect("bob", "phone")
	sub := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, ProtocolVersion: 4, PacketID: 1,
		Filters: packets.Subscriptions{{Filter: protocol.InboxTopic("bob"), Qos: 1}}}
	bob.Write(encodeSubscribe(t, sub))
	in := bufio.NewReader(bob)
	bob.SetReadDeadline(time.Now().Add(testdevice.Wait))
	if typ, _ := readPacket(t, in); typ != packets.Suback {
		t.Fatalf("no SUBACK: %d", typ)
	}
	bob.Close()
	waitFor(t, "bob's disconnect", func() bool { cl, ok := srv.Clients.Get("bob/phone"); return ok && cl.Closed() })

	gate.armed.Store(true)
	resumed := make(chan net.Conn, 1)
	go func() {
		c, err := net.DialTimeout("tcp", addr, testdevice.Wait)
		if err != nil {
			t.Error(err)
			close(resumed)
			return
		}
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 4,
			Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Keepalive: 30, ClientIdentifier: "phone",
				UsernameFlag: true, Username: []byte("bob"), PasswordFlag: true, Password: []byte(token("bob"))}}
		c.Write(encodeConnect(t, pk))
		resumed <- c
	}()
	select {
	case <-gate.reached:
	case <-time.After(testdevice.Wait):
		t.Fatal("the resumed CONNECT never reached its CONNACK")
	}
	alice := connect("alice", "a")
	if code := alice.PublishQoS1(4, protocol.SendTopic("alice"), `{"to":"bob","data":"while connecting"}`); code != 0 {
		t.Fatalf("PUBACK %#x", code)
	}
	// Wait until the fan-out has dealt with the message for bob: held it
	// back (the fix) or queued it to the new client (mochi alone).
	waitFor(t, "the delivery to bob", func() bool {
		cl, ok := srv.Clients.Get("bob/phone")
		return b.Stats().HeldBack > 0 || ok && !cl.Closed() && cl.State.Inflight.Len() > 0
	})
	close(gate.release)
	c := <-resumed
	if c == nil {
		return
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(testdevice.Wait))
	r := bufio.NewReader(c)
	if typ, body := readPacket(t, r); typ != packets.Connack {
		t.Fatalf("first packet of the resumed session: type %d (% x), want CONNACK", typ, body)
	}
	if typ, body := readPacket(t, r); typ != packets.Publish {
		t.Fatalf("after the CONNACK: type %d (% x), want the message", typ, body)
	}
}

func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
