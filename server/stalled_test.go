package server_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/imbridge/imbridge/internal/testdevice"
	"github.com/imbridge/imbridge/internal/testserver"
	"github.com/imbridge/imbridge/protocol"
	"github.com/imbridge/imbridge/server"
)

// stalledDevice connects a device of user that subscribes to its inbox and
// then never reads again: MQTT 3.1.1, keepalive 0 (no read deadline on the
// server), a small receive buffer. The SUBACK is read, so the subscription
// is in place when it returns.
func stalledDevice(t *testing.T, n *testserver.Node, user string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", n.MQTTAddr(), testdevice.Wait)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.(*net.TCPConn).SetReadBuffer(4 << 10); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	connect := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 4,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), ClientIdentifier: user + "-stalled", Clean: true,
			Keepalive: 0, UsernameFlag: true, Username: []byte(user), PasswordFlag: true, Password: []byte(n.Token(user))}}
	if err := connect.ConnectEncode(&out); err != nil {
		t.Fatal(err)
	}
	sub := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, ProtocolVersion: 4,
		PacketID: 1, Filters: packets.Subscriptions{{Filter: protocol.InboxTopic(user), Qos: 1}}}
	if err := sub.SubscribeEncode(&out); err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(testdevice.Wait))
	if _, err := c.Write(out.Bytes()); err != nil {
		t.Fatal(err)
	}
	acks := make([]byte, 4+5) // CONNACK, SUBACK
	if _, err := io.ReadFull(c, acks); err != nil || acks[0] != 0x20 || acks[3] != 0 || acks[4] != 0x90 || acks[8] != 1 {
		t.Fatalf("CONNACK, SUBACK: % x %v", acks, err)
	}
	c.SetDeadline(time.Time{})
	return c
}

// pahoClient connects an MQTT 3.1.1 client of user that subscribes to
// nothing, for sending from other goroutines (testdevice fails the test
// with Fatal, which only the test goroutine may call).
func pahoClient(t *testing.T, n *testserver.Node, user, id string) paho.Client {
	t.Helper()
	c := paho.NewClient(paho.NewClientOptions().AddBroker(n.MQTTURL()).SetClientID(id).SetUsername(user).
		SetPassword(n.Token(user)).SetCleanSession(true).SetAutoReconnect(false).SetConnectTimeout(testdevice.Wait))
	if tok := c.Connect(); !tok.WaitTimeout(testdevice.Wait) || tok.Error() != nil {
		t.Fatalf("connect %s: %v", user, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(0) })
	return c
}

// latencies are one round of alice's sends to bob.
type latencies struct{ puback, http, delivery []time.Duration }

func p99(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[(len(s)*99+99)/100-1]
}

func (l latencies) String() string {
	return fmt.Sprintf("p99 PUBACK %v, HTTP send %v, delivery to bob %v (%d+%d sends)",
		p99(l.puback), p99(l.http), p99(l.delivery), len(l.puback), len(l.http))
}

// sendRound has alice send count stored messages to bob over MQTT (QoS 1)
// and count over HTTP, at once, and bob receive all of them. Every send
// must be acknowledged, and every message delivered, within
// testdevice.Wait: a hang check, not a speed check.
func sendRound(t *testing.T, n *testserver.Node, alice paho.Client, bob *testdevice.Device, round string, count int) latencies {
	t.Helper()
	var l latencies
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { // MQTT
		defer wg.Done()
		for i := range count {
			body := fmt.Sprintf(`{"to":"bob","id":"%s-q%d","data":{"t":%d}}`, round, i, time.Now().UnixNano())
			start := time.Now()
			tok := alice.Publish(protocol.SendTopic("alice"), 1, false, body)
			if !tok.WaitTimeout(testdevice.Wait) || tok.Error() != nil {
				t.Errorf("%s: alice's MQTT send %d not acknowledged within %v: %v", round, i, testdevice.Wait, tok.Error())
				return
			}
			l.puback = append(l.puback, time.Since(start))
		}
	}()
	go func() { // HTTP
		defer wg.Done()
		hc := &http.Client{Timeout: testdevice.Wait}
		tok := n.Token("alice")
		for i := range count {
			body := fmt.Sprintf(`{"to":"bob","id":"%s-h%d","data":{"t":%d}}`, round, i, time.Now().UnixNano())
			req, _ := http.NewRequest("POST", n.HTTPURL()+"/v1/messages", strings.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+tok)
			start := time.Now()
			resp, err := hc.Do(req)
			if err != nil {
				t.Errorf("%s: alice's HTTP send %d not answered within %v: %v", round, i, testdevice.Wait, err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Errorf("%s: HTTP send %d: status %d", round, i, resp.StatusCode)
				return
			}
			l.http = append(l.http, time.Since(start))
		}
	}()
	want := map[string]bool{}
	for i := range count {
		want[fmt.Sprintf("%s-q%d", round, i)] = true
		want[fmt.Sprintf("%s-h%d", round, i)] = true
	}
	deadline := time.After(testdevice.Wait + 2*time.Second)
	for len(want) > 0 {
		select {
		case m := <-bob.Msgs:
			var msg struct {
				ClientMsgID string            `json:"clientMsgId"`
				Data        struct{ T int64 } `json:"data"`
			}
			if err := json.Unmarshal(m.Payload, &msg); err != nil || m.Topic != protocol.InboxTopic("bob") {
				t.Fatalf("bob got %s: %s", m.Topic, m.Payload)
			}
			if want[msg.ClientMsgID] {
				delete(want, msg.ClientMsgID)
				l.delivery = append(l.delivery, time.Duration(time.Now().UnixNano()-msg.Data.T))
			}
		case <-deadline:
			wg.Wait()
			t.Fatalf("%s: %d of alice's %d messages never reached bob", round, len(want), 2*count)
		}
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	return l
}

// TestStalledDeviceCostsOnlyItself: mallory's device subscribes to her inbox
// and never reads (keepalive 0, so the server never times out its read),
// and she floods that inbox with 250 messages of 62 KB. The device's socket
// fills; writes to it must not block anyone: alice's sends to bob over MQTT
// and HTTP are acknowledged and delivered as before. The stalled device is
// disconnected after the write timeout and, reconnected, gets everything by
// sync. Both rounds' latencies are logged, never asserted.
func TestStalledDeviceCostsOnlyItself(t *testing.T) {
	const writeTimeout = 3 * time.Second
	n := testserver.Start(t, func(c *server.Config) {
		c.Limits.SendRate = -1
		c.WriteTimeout = writeTimeout
		c.MaxPendingBytes = 64 << 20 // the write timeout, not the bound, cuts mallory off here
	})
	bob := testdevice.ConnectV3(t, n.MQTTURL(), "bob", opts{Token: n.Token, Subscribe: []string{protocol.InboxTopic("bob")}})
	alice := pahoClient(t, n, "alice", "alice-1")
	const count = 100

	before := sendRound(t, n, alice, bob, "before", count)

	stalled := stalledDevice(t, n, "mallory")
	flooder := pahoClient(t, n, "mallory", "mallory-sender")
	const floods = 250
	pad := strings.Repeat("x", 62_000)
	var acked atomic.Int64
	floodDone := make(chan error, 1)
	go func() {
		for i := range floods {
			tok := flooder.Publish(protocol.SendTopic("mallory"), 1, false,
				fmt.Sprintf(`{"to":"mallory","id":"f%d","data":"%s"}`, i, pad))
			if !tok.WaitTimeout(testdevice.Wait) || tok.Error() != nil {
				floodDone <- fmt.Errorf("mallory's send %d not acknowledged within %v: %v", i, testdevice.Wait, tok.Error())
				return
			}
			acked.Add(1)
		}
		floodDone <- nil
	}()
	// 100 messages of 62 KB are more than the device's socket buffers hold:
	// from here on, it is stalled.
	waitFor(t, "mallory's flood to fill her device's socket", func() bool { return acked.Load() >= 100 })

	during := sendRound(t, n, alice, bob, "during", count)
	overlapped := n.Health().Slow == 0

	select {
	case err := <-floodDone:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(2 * testdevice.Wait):
		t.Fatal("mallory's flood did not end")
	}
	t.Logf("without the stalled device: %v", before)
	t.Logf("with the stalled device:    %v (round over before it was cut off: %v)", during, overlapped)

	// The stalled device is cut off after the write timeout, counted.
	waitFor(t, "the stalled device to be closed as a slow consumer", func() bool { return n.Health().Slow == 1 })
	stalled.SetReadDeadline(time.Now().Add(testdevice.Wait))
	if _, err := io.Copy(io.Discard, stalled); err != nil && strings.Contains(err.Error(), "timeout") {
		t.Fatalf("stalled device still connected: %v", err)
	}

	// Reconnected, mallory gets every message by sync.
	m := testdevice.ConnectV3(t, n.MQTTURL(), "mallory", opts{Token: n.Token})
	seen := map[string]bool{}
	var after uint64
	for page := 0; ; page++ {
		m.Publish(protocol.SyncTopic("mallory"), 1, fmt.Sprintf(`{"id":"s%d","after":%d,"limit":1000}`, page, after))
		p := m.Expect(protocol.ReplyTopic("mallory")).Page(t)
		if p.Error != nil {
			t.Fatalf("sync: %+v", p.Error)
		}
		for _, msg := range p.Messages {
			seen[msg.ClientMsgID] = true
		}
		if !p.More {
			break
		}
		after = p.NextAfter
	}
	for i := range floods {
		if !seen[fmt.Sprint("f", i)] {
			t.Fatalf("mallory's message f%d missing from her sync (%d of %d there)", i, len(seen), floods)
		}
	}
	// And her device works as before.
	m.Send(`{"to":"mallory","data":"back","id":"back"}`)
	if got := m.Expect(protocol.InboxTopic("mallory")).Message(t); got.ClientMsgID != "back" {
		t.Fatalf("got %+v", got)
	}
}
