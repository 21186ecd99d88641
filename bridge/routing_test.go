package bridge_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	pahov5 "github.com/eclipse/paho.golang/paho"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/imbridge/imbridge/internal/testdevice"
	"github.com/imbridge/imbridge/internal/testserver"
	"github.com/imbridge/imbridge/protocol"
	"github.com/imbridge/imbridge/server"
)

// v3 and v5 connect a test device of each MQTT version to a node.
var v3, v5 = testserver.V3, testserver.V5

type (
	dev  = testdevice.Device
	opts = testdevice.Options
)

// protocols connects a device with each MQTT version, for rules that must
// hold for both.
var protocols = map[string]func(testing.TB, *testserver.Node, string, opts) *dev{"3.1.1": v3, "5": v5}

// TestStoredMessageReachesEveryDevice: a normal message is delivered at QoS 1
// to every device of the receiver and copied to the sender's devices, with
// seq and inboxSeq, and is in the history.
func TestStoredMessageReachesEveryDevice(t *testing.T) {
	n := testserver.Start(t)
	alicePhone := v3(t, n, "alice", opts{ClientID: "phone"})
	aliceWeb := v5(t, n, "alice", opts{ClientID: "web"})
	bobPhone := v3(t, n, "bob", opts{ClientID: "phone"})
	bobTablet := v5(t, n, "bob", opts{ClientID: "tablet", Clean: true})

	alicePhone.Send(`{"to":"bob","data":{"text":"hi"},"id":"c-1","from":"mallory","extra":true}`)

	r := alicePhone.Expect(protocol.ReplyTopic("alice")).Receipt(t)
	if r.Status != protocol.StatusStored || r.ID != "c-1" || r.Seq != 1 || r.InboxSeq != 1 || r.MsgID == "" || r.Time == 0 {
		t.Fatalf("receipt = %+v", r)
	}
	for _, d := range []*dev{bobPhone, bobTablet} {
		m := d.Expect(protocol.InboxTopic("bob"))
		msg := m.Message(t)
		if m.QoS != 1 || msg.From != "alice" || msg.To != "bob" || msg.Seq != 1 || msg.InboxSeq != 1 ||
			msg.ID != r.MsgID || msg.ClientMsgID != "c-1" || msg.OnlineUserOnly || string(msg.Data) != `{"text":"hi"}` {
			t.Fatalf("%s got %+v (qos %d)", d.ClientID, msg, m.QoS)
		}
	}
	// The copy on alice's inbox: her other device, and the sending device too.
	for _, d := range []*dev{alicePhone, aliceWeb} {
		msg := d.Expect(protocol.InboxTopic("alice")).Message(t)
		if msg.From != "alice" || msg.To != "bob" || msg.InboxSeq != 1 || msg.ID != r.MsgID {
			t.Fatalf("copy on %s: %+v", d.ClientID, msg)
		}
	}
	// The history holds it, for both sides.
	page := httpHistory(t, n, n.Token("bob"), "with=alice")
	if len(page.Messages) != 1 || page.Messages[0].ID != r.MsgID || page.Messages[0].Seq != 1 {
		t.Fatalf("history = %+v", page)
	}
	for _, d := range []*dev{alicePhone, aliceWeb, bobPhone, bobTablet} {
		d.ExpectQuiet()
	}
}

// TestSeqOrdersConversation: concurrent senders on both sides get one
// gap-free seq per conversation, delivered in seq order.
func TestSeqOrdersConversation(t *testing.T) {
	n := testserver.Start(t)
	alice := v3(t, n, "alice", opts{})
	bob := v3(t, n, "bob", opts{})
	carol := v3(t, n, "carol", opts{})
	const each = 20
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range each {
			carol.Publish(protocol.SendTopic("carol"), 1, fmt.Sprintf(`{"to":"bob","data":%d}`, i))
		}
	}()
	for i := range each {
		alice.Send(fmt.Sprintf(`{"to":"bob","data":%d}`, i))
	}
	<-done
	var lastInbox uint64
	lastSeq := map[string]uint64{}
	for range 2 * each {
		m := bob.Expect(protocol.InboxTopic("bob")).Message(t)
		if m.InboxSeq != lastInbox+1 || m.Seq != lastSeq[m.From]+1 {
			t.Fatalf("out of order: %+v after inbox %d, seq %d", m, lastInbox, lastSeq[m.From])
		}
		lastInbox, lastSeq[m.From] = m.InboxSeq, m.Seq
	}
}

// TestOnlineOnlyExactlyOneConnectedDevice: an online-only message reaches one
// connected device, never a disconnected persistent session (now or when it
// comes back), never the sender's other devices, never the history.
func TestOnlineOnlyExactlyOneConnectedDevice(t *testing.T) {
	for proto, connect := range protocols {
		t.Run(proto, func(t *testing.T) {
			n := testserver.Start(t)
			// Two persistent sessions of bob that go away, then one that stays.
			for _, id := range []string{"old-phone", "old-tablet"} {
				d := connect(t, n, "bob", opts{ClientID: id})
				d.Close()
			}
			n.WaitClients(0)
			bobLive := connect(t, n, "bob", opts{ClientID: "live"})
			alice := connect(t, n, "alice", opts{ClientID: "a1"})
			aliceOther := connect(t, n, "alice", opts{ClientID: "a2"})

			for i := range 10 {
				alice.Send(fmt.Sprintf(`{"to":"bob","onlineUserOnly":true,"data":{"command":"textInput"},"id":"t%d"}`, i))
				r := alice.Expect(protocol.ReplyTopic("alice")).Receipt(t)
				if r.Status != protocol.StatusDelivered || r.Seq != 0 || r.InboxSeq != 0 {
					t.Fatalf("receipt %d = %+v", i, r)
				}
				m := bobLive.Expect(protocol.OnlineTopic("bob"))
				msg := m.Message(t)
				if m.QoS != 0 || !msg.OnlineUserOnly || msg.From != "alice" || msg.Seq != 0 || msg.ClientMsgID != fmt.Sprintf("t%d", i) {
					t.Fatalf("online message %+v qos %d", msg, m.QoS)
				}
			}
			aliceOther.ExpectQuiet()
			alice.ExpectQuiet()
			// The persistent sessions come back: nothing was queued for them.
			for _, id := range []string{"old-phone", "old-tablet"} {
				connect(t, n, "bob", opts{ClientID: id, Subscribe: []string{}}).ExpectQuiet()
			}
			if page := httpHistory(t, n, n.Token("bob"), "with=alice"); len(page.Messages) != 0 {
				t.Fatalf("online-only messages in history: %+v", page.Messages)
			}
			if page := httpSync(t, n, n.Token("bob"), ""); len(page.Messages) != 0 {
				t.Fatalf("online-only messages in sync: %+v", page.Messages)
			}
		})
	}
}

// TestOnlineOnlyPrefersMostRecentlyActive: of several connected devices, the
// one that last published, subscribed or connected gets the message.
func TestOnlineOnlyPrefersMostRecentlyActive(t *testing.T) {
	n := testserver.Start(t)
	alice := v3(t, n, "alice", opts{})
	bob1 := v3(t, n, "bob", opts{ClientID: "one"})
	bob2 := v3(t, n, "bob", opts{ClientID: "two"}) // connected last: most recent
	send := func() {
		alice.Send(`{"to":"bob","onlineUserOnly":true,"data":{"command":"textInput"}}`)
	}
	send()
	bob2.Expect(protocol.OnlineTopic("bob"))
	bob1.ExpectQuiet() // the barrier is a publish: bob1 is now the most recent
	send()
	bob1.Expect(protocol.OnlineTopic("bob"))
	bob2.ExpectQuiet()
}

// TestOnlineOnlyOffline: with no connected device the message is dropped; the
// sender learns it (receipt, and MQTT 5 PUBACK reason 0x10); a device that
// connects later never gets it.
func TestOnlineOnlyOffline(t *testing.T) {
	n := testserver.Start(t)
	old := v3(t, n, "bob", opts{ClientID: "persistent"})
	old.Close()
	n.WaitClients(0)
	// The PUBACK is read off a raw MQTT 5 connection: paho.golang v0.23
	// sometimes reports 0x00 for it when a receipt arrives around it.
	alice := testdevice.RawConnect(t, n.MQTTAddr(), 5, packets.ConnectParams{
		ClientIdentifier: "raw", Clean: true, Username: []byte("alice"), Password: []byte(n.Token("alice")),
	})
	aliceOther := v3(t, n, "alice", opts{})
	code := alice.PublishQoS1(5, protocol.SendTopic("alice"), `{"to":"bob","onlineUserOnly":true,"data":1,"id":"x"}`)
	if code != 0x10 {
		t.Fatalf("PUBACK reason %#x, want 0x10 (no matching subscribers)", code)
	}
	aliceOther.ExpectQuiet() // receipts go only to the device that sent
	v3(t, n, "bob", opts{ClientID: "persistent", Subscribe: []string{}}).ExpectQuiet()
	v3(t, n, "bob", opts{ClientID: "new"}).ExpectQuiet()
}

// TestRetryIsNotSentTwice: the same id from the same user is stored and
// delivered once, for both kinds.
func TestRetryIsNotSentTwice(t *testing.T) {
	n := testserver.Start(t)
	alice := v3(t, n, "alice", opts{})
	bob := v3(t, n, "bob", opts{})
	for _, req := range []string{`{"to":"bob","data":"once","id":"r1"}`, `{"to":"bob","data":"typing","id":"r2","onlineUserOnly":true}`} {
		alice.Send(req)
		first := alice.Expect(protocol.ReplyTopic("alice")).Receipt(t)
		alice.Send(req)
		second := alice.Expect(protocol.ReplyTopic("alice")).Receipt(t)
		if first.Duplicate || !second.Duplicate || second.MsgID != first.MsgID || second.Seq != first.Seq {
			t.Fatalf("first %+v, retry %+v", first, second)
		}
		if first.Status == protocol.StatusStored {
			bob.Expect(protocol.InboxTopic("bob"))
			alice.Expect(protocol.InboxTopic("alice"))
		} else {
			bob.Expect(protocol.OnlineTopic("bob"))
		}
		bob.ExpectQuiet()
		alice.ExpectQuiet()
	}
	if page := httpHistory(t, n, n.Token("alice"), "with=bob"); len(page.Messages) != 1 {
		t.Fatalf("history holds %d messages, want 1", len(page.Messages))
	}
}

// TestPersistentSessionGetsWhatItMissed: a device with a persistent session
// receives on reconnect the stored messages sent while it was away.
func TestPersistentSessionGetsWhatItMissed(t *testing.T) {
	for proto, connect := range protocols {
		t.Run(proto, func(t *testing.T) {
			n := testserver.Start(t)
			bob := connect(t, n, "bob", opts{ClientID: "phone"})
			bob.Close()
			n.WaitClients(0)
			alice := v3(t, n, "alice", opts{})
			for i := range 3 {
				alice.Send(fmt.Sprintf(`{"to":"bob","data":%d}`, i))
			}
			// With the session present there is nothing to subscribe again.
			bob = connect(t, n, "bob", opts{ClientID: "phone", Subscribe: []string{}})
			// mochi resends a session's pending messages in no set order;
			// inboxSeq tells the device the order.
			seen := map[uint64]bool{}
			for range 3 {
				seen[bob.Expect(protocol.InboxTopic("bob")).Message(t).InboxSeq] = true
			}
			if !seen[1] || !seen[2] || !seen[3] {
				t.Fatalf("missed messages: got inbox seqs %v", seen)
			}
		})
	}
}

// TestSyncAfterRestart: after mqttd restarts (sessions lost), a device
// catches up from its last inboxSeq over MQTT without gaps, and seqs go on.
func TestSyncAfterRestart(t *testing.T) {
	n := testserver.Start(t)
	alice := v3(t, n, "alice", opts{})
	for i := range 5 {
		alice.Send(fmt.Sprintf(`{"to":"bob","data":%d}`, i))
	}
	epoch := httpSync(t, n, n.Token("bob"), "").Epoch
	n.Restart()
	alice = v3(t, n, "alice", opts{})
	alice.Send(`{"to":"bob","data":5,"id":"after-restart"}`)
	if r := alice.Expect(protocol.ReplyTopic("alice")).Receipt(t); r.Seq != 6 || r.InboxSeq != 6 {
		t.Fatalf("seq after restart: %+v", r)
	}
	bob := v3(t, n, "bob", opts{ClientID: "new-device"})
	var got []uint64
	after := uint64(2) // the device had seen 1 and 2
	for {
		bob.Publish(protocol.SyncTopic("bob"), 1, fmt.Sprintf(`{"id":"s","after":%d,"limit":2}`, after))
		p := bob.Expect(protocol.ReplyTopic("bob")).Page(t)
		if p.Error != nil || p.Type != "sync" || p.ID != "s" || p.Epoch != epoch {
			t.Fatalf("page = %+v (epoch before restart %s)", p, epoch)
		}
		for _, m := range p.Messages {
			got = append(got, m.InboxSeq)
		}
		if !p.More {
			break
		}
		after = p.NextAfter
	}
	if fmt.Sprint(got) != "[3 4 5 6]" {
		t.Fatalf("synced inbox seqs %v, want [3 4 5 6]", got)
	}
}

// TestMQTT5ResponseTopic: a receipt goes to the request's response topic with
// its correlation data; a response topic outside the user's reply topics is
// refused.
func TestMQTT5ResponseTopic(t *testing.T) {
	n := testserver.Start(t)
	alice := v5(t, n, "alice", opts{Subscribe: []string{"users/alice/reply/#", protocol.InboxTopic("alice")}})
	v5(t, n, "bob", opts{})
	code := alice.PublishV5(protocol.SendTopic("alice"), 1, `{"to":"bob","data":"x"}`,
		&pahov5.PublishProperties{ResponseTopic: "users/alice/reply/web", CorrelationData: []byte("corr-1")})
	if code != 0 {
		t.Fatalf("PUBACK %#x", code)
	}
	m := alice.Expect("users/alice/reply/web")
	if string(m.Correlation) != "corr-1" || m.Receipt(t).Status != protocol.StatusStored {
		t.Fatalf("reply %s corr %q", m.Payload, m.Correlation)
	}
	alice.Expect(protocol.InboxTopic("alice"))

	code = alice.PublishV5(protocol.SendTopic("alice"), 1, `{"to":"bob","data":"x"}`,
		&pahov5.PublishProperties{ResponseTopic: "users/bob/inbox", CorrelationData: []byte("evil")})
	if code != 0x83 {
		t.Fatalf("PUBACK for a foreign response topic %#x, want 0x83", code)
	}
	// The error receipt goes to users/alice/reply (matched by users/alice/reply/#).
	if r := alice.Expect(protocol.ReplyTopic("alice")).Receipt(t); r.Error == nil || r.Error.Code != protocol.CodeInvalidTopic {
		t.Fatalf("receipt %+v", r)
	}
	alice.ExpectQuiet()
	if page := httpHistory(t, n, n.Token("alice"), "with=bob"); len(page.Messages) != 1 {
		t.Fatalf("refused request was stored: %d messages", len(page.Messages))
	}
}

// TestBadInput: every malformed request gets a precise error (receipt for
// MQTT 3.1.1, PUBACK reason code for MQTT 5), stores nothing, and leaves the
// connection up.
func TestBadInput(t *testing.T) {
	n := testserver.Start(t, func(c *server.Config) { c.MaxPayload = 1024 })
	a3 := v3(t, n, "alice", opts{})
	a5 := v5(t, n, "alice", opts{})
	bob := v3(t, n, "bob", opts{})
	cases := []struct {
		payload string
		code    protocol.ErrorCode
	}{
		{`{"to":"bob","data":`, protocol.CodeBadJSON},
		{`not json at all`, protocol.CodeBadJSON},
		{`["to","bob"]`, protocol.CodeNotObject},
		{`{"data":1,"id":"e1"}`, protocol.CodeInvalidTo},
		{`{"to":"bob/../carol","data":1}`, protocol.CodeInvalidTo},
		{`{"to":"bob"}`, protocol.CodeMissingData},
		{`{"to":"bob","data":1,"onlineUserOnly":"yes"}`, protocol.CodeBadJSON},
		{`{"to":"bob","data":1,"priority":"urgent"}`, protocol.CodeInvalidPriority},
		{`{"to":"bob","data":1,"id":"with space"}`, protocol.CodeInvalidID},
		{`{"to":"bob","data":"` + strings.Repeat("x", 1100) + `","id":"big"}`, protocol.CodeTooLarge},
	}
	for _, tc := range cases {
		a3.Send(tc.payload)
		r := a3.Expect(protocol.ReplyTopic("alice")).Receipt(t)
		if r.Status != protocol.StatusError || r.Error == nil || r.Error.Code != tc.code || r.Error.Message == "" {
			t.Errorf("%.40s: receipt %+v, want error %s", tc.payload, r, tc.code)
		}
		code := a5.PublishV5(protocol.SendTopic("alice"), 1, tc.payload, nil)
		if code != 0x99 {
			t.Errorf("%.40s: MQTT 5 PUBACK %#x, want 0x99", tc.payload, code)
		}
		a5.Expect(protocol.ReplyTopic("alice"))
	}
	if r := peekReceiptID(t, a3, `{"data":1,"id":"e1"}`); r != "e1" {
		t.Errorf("error receipt id = %q, want e1", r)
	}
	// Both connections are still up and work.
	a3.Send(`{"to":"bob","data":"still here"}`)
	a5.Send(`{"to":"bob","data":"me too"}`)
	bob.Expect(protocol.InboxTopic("bob"))
	bob.Expect(protocol.InboxTopic("bob"))
	if page := httpHistory(t, n, n.Token("bob"), "with=alice"); len(page.Messages) != 2 {
		t.Fatalf("history holds %d messages, want 2", len(page.Messages))
	}
}

func peekReceiptID(t *testing.T, d *dev, payload string) string {
	t.Helper()
	d.Send(payload)
	var r protocol.Receipt
	json.Unmarshal(d.Expect(protocol.ReplyTopic(d.User)).Payload, &r)
	return r.ID
}

// TestQoS2AndEmptyClientID: a QoS 2 send is stored and delivered once, and a
// clean session with an empty client ID (the server assigns one) works.
func TestQoS2AndEmptyClientID(t *testing.T) {
	n := testserver.Start(t)
	bob := v3(t, n, "bob", opts{})
	anon := v3(t, n, "alice", opts{NoClientID: true, Clean: true})
	anon.Publish(protocol.SendTopic("alice"), 2, `{"to":"bob","data":"exactly once"}`)
	if m := bob.Expect(protocol.InboxTopic("bob")).Message(t); string(m.Data) != `"exactly once"` || m.Seq != 1 {
		t.Fatalf("got %+v", m)
	}
	bob.ExpectQuiet()
}
