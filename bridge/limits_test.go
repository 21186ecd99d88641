package bridge_test

import (
	"fmt"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/imbridge/imbridge/bridge"
	"github.com/imbridge/imbridge/internal/testdevice"
	"github.com/imbridge/imbridge/internal/testserver"
	"github.com/imbridge/imbridge/protocol"
	"github.com/imbridge/imbridge/server"
)

func limits(l bridge.Limits) func(*server.Config) { return func(c *server.Config) { c.Limits = l } }

// TestDeviceLimit: a user's sessions are capped; resuming one is allowed.
func TestDeviceLimit(t *testing.T) {
	n := testserver.Start(t, limits(bridge.Limits{MaxDevicesPerUser: 2}))
	v3(t, n, "alice", opts{ClientID: "a"})
	b := v3(t, n, "alice", opts{ClientID: "b"}) // persistent, then away
	b.Close()
	n.WaitClients(1)
	if _, err := testdevice.DialV3(t, n.MQTTURL(), "alice", opts{ClientID: "c", Token: n.Token}); err == nil {
		t.Fatal("a third device connected")
	}
	raw := rawConnectCode(t, n, 5, "alice", "c")
	if raw != 0x97 {
		t.Fatalf("MQTT 5 CONNACK %#x, want 0x97 quota exceeded", raw)
	}
	v3(t, n, "alice", opts{ClientID: "b", Subscribe: []string{}}) // resuming its own session is fine
	v3(t, n, "bob", opts{ClientID: "c"})                          // other users are not affected
	if got := n.Health().Bridge.ConnectsLimited; got != 2 {
		t.Fatalf("connectsLimited = %d", got)
	}
}

// rawConnectCode sends an MQTT CONNECT of the given version and returns the
// CONNACK's reason code.
func rawConnectCode(t *testing.T, n *testserver.Node, version byte, user, id string) byte {
	t.Helper()
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: version,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 30, ClientIdentifier: id,
			UsernameFlag: true, Username: []byte(user), PasswordFlag: true, Password: []byte(n.Token(user))}}
	code, err := testdevice.RawConnectCode(n.MQTTAddr(), pk)
	if err != nil {
		t.Fatal(err)
	}
	return code
}

// TestConnectRateLimits: CONNECT attempts are limited per user and per IP.
func TestConnectRateLimits(t *testing.T) {
	n := testserver.Start(t, limits(bridge.Limits{ConnectRatePerUser: 0.001, ConnectBurstUser: 2}))
	for i := range 2 {
		v3(t, n, "alice", opts{ClientID: fmt.Sprint("d", i)})
	}
	if code := rawConnectCode(t, n, 5, "alice", "d3"); code != 0x9f {
		t.Fatalf("third CONNECT of alice: %#x, want 0x9f connection rate exceeded", code)
	}
	if code := rawConnectCode(t, n, 4, "alice", "d3"); code != 3 {
		t.Fatalf("MQTT 3.1.1: %d, want 3 server unavailable", code)
	}
	v3(t, n, "bob", opts{}) // per user

	n2 := testserver.Start(t, limits(bridge.Limits{ConnectRatePerIP: 0.001, ConnectBurstPerIP: 3}))
	for _, u := range []string{"a", "b", "c"} {
		v3(t, n2, u, opts{})
	}
	if code := rawConnectCode(t, n2, 5, "d", "x"); code != 0x9f {
		t.Fatalf("fourth CONNECT from the IP: %#x, want 0x9f", code)
	}
}

// TestSendRateShedsLowPriorityFirst: with the bucket running low, low
// priority sends are refused first, then normal ones, high ones last; each
// refusal is reported (HTTP 429 rate_limited), nothing refused is stored.
func TestSendRateShedsLowPriorityFirst(t *testing.T) {
	n := testserver.Start(t, limits(bridge.Limits{SendRate: 0.001, SendBurst: 10}))
	tok := n.Token("alice")
	sendUntilRefused := func(prio string) int {
		for i := 0; ; i++ {
			code, r := httpSend(t, n, tok, fmt.Sprintf(`{"to":"bob","data":%d,"priority":%q}`, i, prio))
			if code == 429 {
				if r.Error == nil || r.Error.Code != protocol.CodeRateLimited {
					t.Fatalf("429 without rate_limited: %+v", r)
				}
				return i
			}
			if code != 200 {
				t.Fatalf("send: %d %+v", code, r)
			}
		}
	}
	// Bucket 10: low needs 1+5 left, normal 1+2, high 1.
	low, normal, high := sendUntilRefused("low"), sendUntilRefused("normal"), sendUntilRefused("high")
	if low != 5 || normal != 3 || high != 2 {
		t.Fatalf("sent low %d, normal %d, high %d before each was refused; want 5, 3, 2", low, normal, high)
	}
	if p := httpHistory(t, n, n.Token("bob"), "with=alice"); len(p.Messages) != 10 {
		t.Fatalf("%d stored, want the 10 accepted", len(p.Messages))
	}
	// Admin sends are not limited.
	if code, _ := httpSend(t, n, n.AdminToken(), `{"from":"alice","to":"bob","data":"ops"}`); code != 200 {
		t.Fatalf("admin send: %d", code)
	}
	// Over MQTT: 5 gets PUBACK 0x97; 3.1.1 gets no PUBACK and a closed
	// connection for a stored send (it will resend), a receipt for an
	// online-only one.
	raw := testdevice.RawConnect(t, n.MQTTAddr(), 5, packets.ConnectParams{ClientIdentifier: "r5", Clean: true,
		Username: []byte("alice"), Password: []byte(tok)})
	if code := raw.PublishQoS1(5, protocol.SendTopic("alice"), `{"to":"bob","data":1}`); code != 0x97 {
		t.Fatalf("MQTT 5 PUBACK %#x, want 0x97", code)
	}
	a3 := v3(t, n, "alice", opts{})
	a3.Publish(protocol.SendTopic("alice"), 0, `{"to":"bob","data":"typing","onlineUserOnly":true}`)
	if r := a3.Expect(protocol.ReplyTopic("alice")).Receipt(t); r.Error == nil || r.Error.Code != protocol.CodeRateLimited {
		t.Fatalf("online-only shed: %+v", r)
	}
	c, lost := rawV3Client(t, n, "alice")
	c.Publish(protocol.SendTopic("alice"), 1, false, `{"to":"bob","data":"over"}`)
	<-lost
	if got := n.Health().Bridge.Shed; got < 5 {
		t.Fatalf("shed = %d", got)
	}
}
