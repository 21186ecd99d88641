package bridge_test

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/imbridge/imbridge/bridge"
	"github.com/imbridge/imbridge/internal/poll"
	"github.com/imbridge/imbridge/internal/testdevice"
	"github.com/imbridge/imbridge/internal/testserver"
	"github.com/imbridge/imbridge/protocol"
	"github.com/imbridge/imbridge/server"
)

// TestPoisonDataRefused: data that would break a receiver's JSON decoder
// (nested 10,000 deep, or not UTF-8) is refused with invalid_data and never
// stored; 64 levels are fine.
func TestPoisonDataRefused(t *testing.T) {
	n := testserver.Start(t)
	alice := v3(t, n, "alice", opts{})
	for name, data := range map[string]string{
		"100 deep": strings.Repeat("[", 100) + strings.Repeat("]", 100),
		"65 deep":  strings.Repeat(`{"a":`, 65) + "1" + strings.Repeat("}", 65),
		"bad utf8": "\"\xff\xfe\"",
	} {
		alice.Send(`{"to":"bob","id":"p","data":` + data + `}`)
		r := alice.Expect(protocol.ReplyTopic("alice")).Receipt(t)
		if r.Status != protocol.StatusError || r.Error.Code != protocol.CodeInvalidData {
			t.Errorf("%s: receipt %+v, want invalid_data", name, r)
		}
	}
	// 10,000 deep is past what the JSON parser itself takes: bad_json.
	alice.Send(`{"to":"bob","id":"p","data":` + strings.Repeat("[", 10000) + strings.Repeat("]", 10000) + `}`)
	if r := alice.Expect(protocol.ReplyTopic("alice")).Receipt(t); r.Status != protocol.StatusError {
		t.Errorf("10,000 deep: receipt %+v", r)
	}
	alice.Send(`{"to":"bob","id":"ok","data":` + strings.Repeat("[", 64) + strings.Repeat("]", 64) + `}`)
	if r := alice.Expect(protocol.ReplyTopic("alice")).Receipt(t); r.Status != protocol.StatusStored || r.InboxSeq != 1 {
		t.Fatalf("64 levels: receipt %+v", r)
	}
	if p := httpHistory(t, n, n.Token("bob"), "with=alice"); len(p.Messages) != 1 {
		t.Fatalf("history holds %d messages, want only the valid one", len(p.Messages))
	}
}

// TestRepliesReachOnlyTheAskingDevice: offline persistent sessions
// subscribed to the reply topic hold nothing however many pages the user
// asks for (each page would otherwise be queued for each of them), and a
// connected sibling device gets none of them either.
func TestRepliesReachOnlyTheAskingDevice(t *testing.T) {
	n := testserver.Start(t, func(c *server.Config) { c.Limits.QueryRate = -1 })
	alice := v3(t, n, "alice", opts{})
	mallory := v3(t, n, "mallory", opts{})
	alice.Send(`{"to":"mallory","data":"` + strings.Repeat("x", 60<<10) + `"}`)
	mallory.Expect(protocol.InboxTopic("mallory"))
	for i := range 3 {
		v3(t, n, "mallory", opts{ClientID: fmt.Sprint("away-", i)}).Close()
	}
	sibling := v3(t, n, "mallory", opts{})
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	before := heap()
	for i := range 150 {
		mallory.Publish(protocol.SyncTopic("mallory"), 0, fmt.Sprintf(`{"id":"s%d","after":0}`, i))
	}
	for range 150 {
		if p := mallory.Expect(protocol.ReplyTopic("mallory")).Page(t); p.Error != nil || len(p.Messages) != 1 {
			t.Fatalf("page %+v", p)
		}
	}
	sibling.ExpectQuiet()
	// Queued for the 4 other sessions, 150 pages of 60 KB would be 36 MB.
	grown := int64(heap()) - int64(before)
	t.Logf("heap grew by %d KB over 150 pages of 60 KB", grown>>10)
	if grown > 8<<20 {
		t.Fatalf("heap grew by %d MB after 150 pages; replies are held for sessions that did not ask", grown>>20)
	}
	// The inbox delivery of the one message is all that sessions hold.
	if held := n.Bridge().HeldBytes(); held > 4*(61<<10) {
		t.Fatalf("sessions hold %d bytes after 150 pages of 60 KB", held)
	}
}

// TestSessionByteBudget: a disconnected persistent session holds at most
// MaxSessionBytes of stored messages; the rest are skipped, counted, and
// recovered by sync when the device is back.
func TestSessionByteBudget(t *testing.T) {
	const budget = 256 << 10
	n := testserver.Start(t, func(c *server.Config) { c.Limits.MaxSessionBytes = budget })
	v3(t, n, "bob", opts{ClientID: "phone"}).Close()
	n.WaitClients(0)
	alice := v3(t, n, "alice", opts{Subscribe: []string{protocol.ReplyTopic("alice")}})
	big := strings.Repeat("x", 60<<10)
	for i := range 20 {
		alice.Send(fmt.Sprintf(`{"to":"bob","id":"m%d","data":"%s"}`, i, big))
		alice.Expect(protocol.ReplyTopic("alice"))
	}
	waitFor(t, "budget drops", func() bool { return n.Bridge().Stats().BudgetDrops > 0 })
	if held := n.Bridge().HeldBytes(); held > budget {
		t.Fatalf("held %d bytes, budget %d", held, budget)
	}
	bob := v3(t, n, "bob", opts{ClientID: "phone", Subscribe: []string{}})
	seen := map[uint64]bool{}
	for _, m := range bob.Barrier() {
		if m.Topic == protocol.InboxTopic("bob") {
			seen[m.Message(t).InboxSeq] = true
		}
	}
	if len(seen) == 0 || len(seen) >= 20 {
		t.Fatalf("session delivered %d of 20 messages; want some, within the budget", len(seen))
	}
	synced, after := 0, uint64(0)
	for {
		p := httpSync(t, n, n.Token("bob"), fmt.Sprint("after=", after))
		synced += len(p.Messages)
		if !p.More {
			break
		}
		after = p.NextAfter
	}
	if synced != 20 {
		t.Fatalf("sync found %d messages, want 20", synced)
	}
}

// TestNoLockout: failed logins with bob's name from one address neither
// spend bob's CONNECT budget nor lock out bob's devices elsewhere; the
// attacking address itself is slowed down.
func TestNoLockout(t *testing.T) {
	n := testserver.Start(t)
	refused := 0
	for range 40 {
		code, err := connectFrom(t, "127.0.0.2", n.MQTTAddr(), "bob", "not-a-token")
		if err != nil {
			t.Fatal(err)
		}
		if code == 0x9f { // connection rate exceeded: the address's failures ran out
			refused++
		}
	}
	if refused == 0 {
		t.Fatal("40 failed logins from one address were never slowed down")
	}
	for i := range 15 {
		if code, err := connectFrom(t, "127.0.0.1", n.MQTTAddr(), "bob", n.Token("bob")); err != nil || code != 0 {
			t.Fatalf("bob's login %d refused: %#x %v", i, code, err)
		}
	}
}

// connectFrom sends an MQTT 5 CONNECT from the local address ip and returns
// the CONNACK reason.
func connectFrom(t *testing.T, ip, addr, user, password string) (byte, error) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: testdevice.Wait}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 5,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 30, ClientIdentifier: "x",
			UsernameFlag: true, Username: []byte(user), PasswordFlag: true, Password: []byte(password)}}
	var buf bytes.Buffer
	if err := pk.ConnectEncode(&buf); err != nil {
		return 0, err
	}
	c.SetDeadline(time.Now().Add(testdevice.Wait))
	if _, err := c.Write(buf.Bytes()); err != nil {
		return 0, err
	}
	typ, body := readPacket(t, bufio.NewReader(c))
	if typ != packets.Connack || len(body) < 2 {
		return 0, fmt.Errorf("no CONNACK: type %d", typ)
	}
	return body[1], nil
}

// readPacket reads one MQTT packet and returns its type and body.
func readPacket(t *testing.T, r *bufio.Reader) (byte, []byte) {
	t.Helper()
	b, err := r.ReadByte()
	if err != nil {
		return 0, nil
	}
	n, _, err := packets.DecodeLength(r)
	if err != nil {
		return 0, nil
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return 0, nil
	}
	return b >> 4, body
}

// TestSimultaneousConnectsKeepDeviceLimit: 20 CONNECTs of one user at once,
// with room for 3 devices, make exactly 3 sessions.
func TestSimultaneousConnectsKeepDeviceLimit(t *testing.T) {
	n := testserver.Start(t, func(c *server.Config) { c.Limits.MaxDevicesPerUser = 3 })
	var wg sync.WaitGroup
	var mu sync.Mutex
	accepted := 0
	for i := range 20 {
		wg.Go(func() {
			pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 5,
				Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Keepalive: 30, ClientIdentifier: fmt.Sprint("d", i),
					UsernameFlag: true, Username: []byte("bob"), PasswordFlag: true, Password: []byte(n.Token("bob"))}}
			pk.Properties.SessionExpiryInterval = 600
			pk.Properties.SessionExpiryIntervalFlag = true
			code, err := testdevice.RawConnectCode(n.MQTTAddr(), pk)
			if err != nil {
				t.Error(err)
			}
			if code == 0 {
				mu.Lock()
				accepted++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if accepted != 3 {
		t.Fatalf("%d of 20 simultaneous CONNECTs accepted, limit 3", accepted)
	}
}

// TestUnsubscribeIsNoOracle: UNSUBSCRIBE of another user's topic answers
// "no subscription existed" whether or not that user is subscribed, and
// moves no counter.
func TestUnsubscribeIsNoOracle(t *testing.T) {
	n := testserver.Start(t)
	mallory := testdevice.RawConnect(t, n.MQTTAddr(), 5, packets.ConnectParams{
		ClientIdentifier: "m", Clean: true, Username: []byte("mallory"), Password: []byte(n.Token("mallory")),
	})
	in := bufio.NewReader(mallory)
	unsub := func(filter string) byte {
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Unsubscribe, Qos: 1}, ProtocolVersion: 5,
			PacketID: 7, Filters: packets.Subscriptions{{Filter: filter}}}
		var buf bytes.Buffer
		if err := pk.UnsubscribeEncode(&buf); err != nil {
			t.Fatal(err)
		}
		mallory.Write(buf.Bytes())
		mallory.SetReadDeadline(time.Now().Add(testdevice.Wait))
		typ, body := readPacket(t, in)
		if typ != packets.Unsuback || len(body) < 4 {
			t.Fatalf("no UNSUBACK: type %d % x", typ, body)
		}
		return body[len(body)-1]
	}
	without := unsub(protocol.InboxTopic("dave"))
	v3(t, n, "dave", opts{})
	subs := n.Health().Subs
	for range 5 {
		if with := unsub(protocol.InboxTopic("dave")); with != without || with != 0x11 {
			t.Fatalf("UNSUBACK %#x with dave subscribed, %#x without; want 0x11 both", with, without)
		}
	}
	if got := n.Health().Subs; got != subs {
		t.Fatalf("subscriptions gauge moved from %d to %d", subs, got)
	}
}

// TestDeepReplyFiltersRefused: filters under users/U/reply/ deeper than 4
// levels or longer than 256 bytes are refused before mochi indexes them;
// other users' SUBSCRIBEs are not held up by them.
func TestDeepReplyFiltersRefused(t *testing.T) {
	n := testserver.Start(t)
	d := v3(t, n, "mallory", opts{Subscribe: []string{}})
	base := protocol.ReplyTopic("mallory") + "/"
	for filter, ok := range map[string]bool{
		base + "a/b/c/d":                          true,
		base + "a/b/c/d/e":                        false,
		base + strings.Repeat("x/", 32000) + "x":  false,
		base + strings.Repeat("y", 300):           false,
		base + "#":                                true,
		protocol.ReplyTopic("mallory") + "/a/+/#": true,
	} {
		if code := d.SubscribeV3(filter); (code < 0x80) != ok {
			t.Errorf("SUBACK %#x for %.40s (%d bytes), want allowed=%v", code, filter, len(filter), ok)
		}
	}
	v3(t, n, "bob", opts{}) // subscribes at once
}

// TestResubscribeWhileDeliveryInFlight: a resumed session whose SUBSCRIBE
// reuses the packet id of a delivery in flight to it gets its SUBACK with
// that id and a granted QoS, not 0x91 (mochi shares the two id spaces).
func TestResubscribeWhileDeliveryInFlight(t *testing.T) {
	n := testserver.Start(t)
	v3(t, n, "bob", opts{ClientID: "phone"}).Close()
	n.WaitClients(0)
	alice := v3(t, n, "alice", opts{Subscribe: []string{protocol.ReplyTopic("alice")}})
	alice.Send(`{"to":"bob","data":1,"id":"x"}`)
	alice.Expect(protocol.ReplyTopic("alice"))
	waitFor(t, "the delivery held for bob", func() bool { return n.Bridge().HeldBytes() > 0 })
	bob := testdevice.RawConnect(t, n.MQTTAddr(), 4, packets.ConnectParams{
		ClientIdentifier: "phone", Username: []byte("bob"), Password: []byte(n.Token("bob")),
	})
	in := bufio.NewReader(bob)
	bob.SetReadDeadline(time.Now().Add(testdevice.Wait))
	typ, body := readPacket(t, in) // the resent delivery, not acknowledged
	if typ != packets.Publish {
		t.Fatalf("got packet type %d, want the resent PUBLISH", typ)
	}
	tl := int(body[0])<<8 | int(body[1])
	id := uint16(body[2+tl])<<8 | uint16(body[3+tl])
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, ProtocolVersion: 4,
		PacketID: id, Filters: packets.Subscriptions{{Filter: protocol.InboxTopic("bob"), Qos: 1}}}
	var buf bytes.Buffer
	if err := pk.SubscribeEncode(&buf); err != nil {
		t.Fatal(err)
	}
	bob.Write(buf.Bytes())
	typ, body = readPacket(t, in)
	if typ != packets.Suback || len(body) != 3 || uint16(body[0])<<8|uint16(body[1]) != id || body[2] != 1 {
		t.Fatalf("SUBACK type %d body % x, want id %d granted QoS 1", typ, body, id)
	}
}

// TestSpecViolationsRefused: packets the MQTT specs call malformed or a
// protocol error end the connection, with DISCONNECT and a reason in MQTT 5
// and without any packet in MQTT 3.1.1 (whose servers never send
// DISCONNECT).
func TestSpecViolationsRefused(t *testing.T) {
	n := testserver.Start(t)
	encode := func(pk packets.Packet) []byte {
		var buf bytes.Buffer
		var err error
		switch pk.FixedHeader.Type {
		case packets.Publish:
			err = pk.PublishEncode(&buf)
		case packets.Subscribe:
			err = pk.SubscribeEncode(&buf)
		}
		if err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	for _, tc := range []struct {
		name    string
		version byte
		packet  []byte
		want    byte // DISCONNECT reason; 0: closed without a packet
	}{
		{"3.1.1 publish to another user", 4, encode(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
			ProtocolVersion: 4, PacketID: 1, TopicName: protocol.SendTopic("bob"), Payload: []byte(`{}`)}), 0},
		{"PUBREL id 0", 4, []byte{0x62, 0x02, 0x00, 0x00}, 0},
		{"PUBACK id 0", 5, []byte{0x40, 0x02, 0x00, 0x00}, 0x82},
		{"retain handling 3", 5, encode(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1},
			ProtocolVersion: 5, PacketID: 3, Filters: packets.Subscriptions{{Filter: protocol.InboxTopic("alice"), RetainHandling: 3}}}), 0x82},
		{"payload format 2", 5, encode(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish},
			ProtocolVersion: 5, TopicName: protocol.SendTopic("alice"), Payload: []byte(`{}`),
			Properties: packets.Properties{PayloadFormat: 2, PayloadFormatFlag: true}}), 0x81},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := testdevice.RawConnect(t, n.MQTTAddr(), tc.version, packets.ConnectParams{
				ClientIdentifier: "raw", Clean: true, Username: []byte("alice"), Password: []byte(n.Token("alice")),
			})
			c.Write(tc.packet)
			c.SetReadDeadline(time.Now().Add(testdevice.Wait))
			rest, err := io.ReadAll(c)
			if err != nil {
				t.Fatalf("connection not closed: %v", err)
			}
			switch {
			case tc.want == 0 && len(rest) != 0:
				t.Fatalf("MQTT 3.1.1 client got % x before the close, want nothing", rest)
			case tc.want != 0 && (len(rest) < 3 || rest[0] != 0xe0 || rest[2] != tc.want):
				t.Fatalf("got % x, want DISCONNECT %#x", rest, tc.want)
			}
		})
	}
	for name, pk := range map[string]packets.Packet{
		"auth method": {FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 5,
			Connect:    packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 30, ClientIdentifier: "a"},
			Properties: packets.Properties{AuthenticationMethod: "SCRAM-SHA-1"}},
	} {
		if code, err := testdevice.RawConnectCode(n.MQTTAddr(), pk); err != nil || code != 0x8c {
			t.Errorf("%s: CONNACK %#x %v, want 0x8c", name, code, err)
		}
	}
	// A 3.1.1 CONNECT with two bytes after its password: closed, no CONNACK.
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 4,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 30, ClientIdentifier: "a",
			UsernameFlag: true, Username: []byte("alice"), PasswordFlag: true, Password: []byte(n.Token("alice"))}}
	var buf bytes.Buffer
	if err := pk.ConnectEncode(&buf); err != nil {
		t.Fatal(err)
	}
	fh := packets.FixedHeader{}
	if err := fh.Decode(buf.Bytes()[0]); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(bytes.NewReader(buf.Bytes()[1:]))
	body, _, _ := packets.DecodeLength(r)
	rest, _ := io.ReadAll(r)
	fh.Remaining = body + 2
	var out bytes.Buffer
	fh.Encode(&out)
	out.Write(rest)
	out.WriteString("xy")
	raw := out.Bytes()
	c, err := net.Dial("tcp", n.MQTTAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write(raw)
	c.SetReadDeadline(time.Now().Add(testdevice.Wait))
	if rest, err := io.ReadAll(c); err != nil || len(rest) != 0 {
		t.Fatalf("CONNECT with stray bytes: got % x, %v; want a close without CONNACK", rest, err)
	}
}

// TestQueriesRateLimited: history and sync requests beyond a user's rate
// get rate_limited (HTTP 429), and other users are not affected.
func TestQueriesRateLimited(t *testing.T) {
	n := testserver.Start(t, func(c *server.Config) { c.Limits.QueryRate, c.Limits.QueryBurst = 1, 5 })
	limited := 0
	for range 20 {
		resp := httpGet(t, n, n.Token("mallory"), "/v1/sync?after=0")
		if resp == http.StatusTooManyRequests {
			limited++
		}
	}
	if limited < 10 {
		t.Fatalf("%d of 20 quick syncs limited with a burst of 5", limited)
	}
	if code := httpGet(t, n, n.Token("bob"), "/v1/sync?after=0"); code != http.StatusOK {
		t.Fatalf("bob's sync: HTTP %d", code)
	}
	if n.Bridge().Stats().QueriesLimited < 10 {
		t.Fatalf("stats: %+v", n.Bridge().Stats())
	}
}

func httpGet(t *testing.T, n *testserver.Node, token, path string) int {
	t.Helper()
	req, _ := http.NewRequest("GET", n.HTTPURL()+path, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// TestOnlineRetryRoutedOnce: simultaneous online-only sends with the same
// id reach the receiver once.
func TestOnlineRetryRoutedOnce(t *testing.T) {
	n := testserver.Start(t)
	bob := v3(t, n, "bob", opts{})
	alice := v3(t, n, "alice", opts{Subscribe: []string{}})
	var wg sync.WaitGroup
	for range 10 {
		wg.Go(func() {
			alice.Publish(protocol.SendTopic("alice"), 1, `{"to":"bob","onlineUserOnly":true,"data":1,"id":"same"}`)
		})
	}
	wg.Wait()
	got := 0
	for _, m := range bob.Barrier() {
		if m.Topic == protocol.OnlineTopic("bob") {
			got++
		}
	}
	if got != 1 || n.Bridge().Stats().Duplicates != 9 {
		t.Fatalf("bob got %d copies; stats %+v", got, n.Bridge().Stats())
	}
}

// TestCloseTwiceAtOnce: Close from several goroutines returns for all, with
// the same result.
func TestCloseTwiceAtOnce(t *testing.T) {
	n := testserver.Start(t)
	var wg sync.WaitGroup
	errs := make([]error, 5)
	for i := range errs {
		wg.Go(func() { errs[i] = n.Bridge().Close() })
	}
	wg.Wait()
	for _, err := range errs {
		if err != errs[0] {
			t.Fatalf("Close results differ: %v", errs)
		}
	}
}

var _ = bridge.Stats{}

// waitFor polls cond until it holds, failing the test after poll.Total.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	poll.For(t, poll.Total, poll.Interval, func() error {
		if !cond() {
			return fmt.Errorf("%s: not yet", what)
		}
		return nil
	})
}

// TestStorageQuota: a user over the storage quota gets quota_exceeded
// (MQTT 5 PUBACK 0x97, HTTP 403); nothing is stored, the connection stays
// up, and other users still send.
func TestStorageQuota(t *testing.T) {
	n := testserver.Start(t, func(c *server.Config) { c.Limits.MaxUserBytes = 4000 })
	alice := v3(t, n, "alice", opts{Subscribe: []string{protocol.ReplyTopic("alice")}})
	body := strings.Repeat("x", 900)
	stored := 0
	for i := range 10 {
		alice.Send(fmt.Sprintf(`{"to":"bob","id":"q%d","data":"%s"}`, i, body))
		r := alice.Expect(protocol.ReplyTopic("alice")).Receipt(t)
		if r.Status == protocol.StatusStored {
			stored++
			continue
		}
		if r.Error == nil || r.Error.Code != protocol.CodeQuota {
			t.Fatalf("receipt %+v, want stored or quota_exceeded", r)
		}
	}
	if stored == 0 || stored == 10 {
		t.Fatalf("%d of 10 messages of 900 bytes stored under a quota of 4000 bytes", stored)
	}
	a5 := v5(t, n, "alice", opts{})
	if code := a5.PublishV5(protocol.SendTopic("alice"), 1, `{"to":"bob","data":"`+body+`"}`, nil); code != 0x97 {
		t.Fatalf("MQTT 5 PUBACK %#x, want 0x97", code)
	}
	if !alice.Connected() {
		t.Fatal("the MQTT 3.1.1 connection was closed; a quota refusal is final, a resend would not help")
	}
	v3(t, n, "carol", opts{}).Send(`{"to":"bob","data":1}`)
	if p := httpHistory(t, n, n.Token("bob"), "with=alice"); len(p.Messages) != stored {
		t.Fatalf("history holds %d of alice's messages, want %d", len(p.Messages), stored)
	}
}

func encodeSubscribe(t *testing.T, pk packets.Packet) []byte {
	var buf bytes.Buffer
	if err := pk.SubscribeEncode(&buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func encodeConnect(t *testing.T, pk packets.Packet) []byte {
	var buf bytes.Buffer
	if err := pk.ConnectEncode(&buf); err != nil {
		t.Error(err)
	}
	return buf.Bytes()
}
