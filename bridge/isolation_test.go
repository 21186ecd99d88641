package bridge_test

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/imbridge/imbridge/internal/testdevice"
	"github.com/imbridge/imbridge/internal/testserver"
	"github.com/imbridge/imbridge/protocol"
)

// hostile is mallory's view of the broker during the property test.
type hostile struct {
	t    *testing.T
	n    *testserver.Node
	rng  *rand.Rand
	mu   sync.Mutex // guards got
	got  []string   // every payload mallory received, with its topic
	conn paho.Client
}

var (
	victims  = []string{"alice", "bob"}
	segments = []string{"users", "alice", "bob", "mallory", "+", "#", "inbox", "online", "send", "reply", "history", "sync", "$share", "$SYS", "x", ""}
)

// topic makes a random topic name or filter from pieces that matter.
func (h *hostile) topic() string {
	var parts []string
	for range 1 + h.rng.IntN(5) {
		parts = append(parts, segments[h.rng.IntN(len(segments))])
	}
	return strings.Join(parts, "/")
}

func (h *hostile) clientID() string {
	return []string{"phone", "web", "m1", "alice/phone", "bob", ""}[h.rng.IntN(6)]
}

func (h *hostile) connect() {
	if h.conn != nil {
		h.conn.Disconnect(0)
	}
	id := h.clientID()
	clean := id == "" || h.rng.IntN(2) == 0
	opts := paho.NewClientOptions().AddBroker(h.n.MQTTURL()).SetClientID(id).SetCleanSession(clean).
		SetUsername("mallory").SetPassword(h.n.Token("mallory")).SetAutoReconnect(false).SetConnectTimeout(testdevice.Wait)
	opts.SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) {
		h.mu.Lock()
		h.got = append(h.got, m.Topic()+" "+string(m.Payload()))
		h.mu.Unlock()
	})
	if h.rng.IntN(3) == 0 {
		opts.SetWill(h.topic(), `{"to":"bob","from":"alice","data":"will"}`, byte(h.rng.IntN(2)), false)
	}
	c := paho.NewClient(opts)
	if tok := c.Connect(); tok.WaitTimeout(opWait) && tok.Error() == nil {
		h.conn = c
	} else {
		h.conn = nil
	}
}

// opWait bounds each hostile operation: a refused QoS 1 publish closes an
// MQTT 3.1.1 connection and its token never completes, which is an outcome.
const opWait = 300 * time.Millisecond

// step does one random operation.
func (h *hostile) step() {
	if h.conn == nil || !h.conn.IsConnectionOpen() {
		h.connect()
		return
	}
	switch h.rng.IntN(8) {
	case 0, 1:
		h.conn.Subscribe(h.topic(), byte(h.rng.IntN(2)), nil).WaitTimeout(opWait)
	case 2:
		payload := fmt.Sprintf(`{"id":"fake","from":"alice","to":"bob","data":"spoof-%d"}`, h.rng.IntN(1000))
		h.conn.Publish(h.topic(), byte(h.rng.IntN(2)), h.rng.IntN(2) == 0, payload).WaitTimeout(opWait)
	case 3:
		to := []string{"alice", "bob", "mallory"}[h.rng.IntN(3)]
		payload := fmt.Sprintf(`{"to":%q,"from":"alice","onlineUserOnly":%v,"data":"from-mallory"}`, to, h.rng.IntN(2) == 0)
		h.conn.Publish(protocol.SendTopic("mallory"), 1, h.rng.IntN(2) == 0, payload).WaitTimeout(opWait)
	case 4:
		h.conn.Publish(protocol.HistoryTopic("mallory"), 0, false, `{"with":"bob"}`).WaitTimeout(opWait)
	case 5: // what a legitimate device of hers does
		h.conn.SubscribeMultiple(map[string]byte{protocol.InboxTopic("mallory"): 1, protocol.OnlineFilter("mallory"): 0, protocol.ReplyTopic("mallory"): 1}, nil).WaitTimeout(opWait)
	case 6:
		h.conn.Publish(protocol.SendTopic("mallory"), 1, false, `{"to":"mallory","data":"from-mallory","id":"self"}`).WaitTimeout(opWait)
	case 7:
		h.connect() // reconnect, maybe taking another client ID, maybe with a will
	}
}

// TestIsolationProperty: random sequences of connects, subscribes (any
// filter, shared or not), publishes (any topic, retained or not, forged
// fields), wills and reused client IDs by mallory never deliver alice's and
// bob's messages to her, and never put anything into their topics that they
// did not send or that the server did not send from mallory herself.
func TestIsolationProperty(t *testing.T) {
	total := 0
	for seed := range uint64(8) {
		t.Run(fmt.Sprint("seed ", seed), func(t *testing.T) {
			n := testserver.Start(t)
			alice := v3(t, n, "alice", opts{ClientID: "phone"})
			bob := v3(t, n, "bob", opts{ClientID: "phone"})
			h := &hostile{t: t, n: n, rng: rand.New(rand.NewPCG(seed, 42))}
			secrets := map[string]bool{}
			for i := range 80 {
				h.step()
				if i%10 == 0 { // the victims talk meanwhile
					secret := fmt.Sprintf("secret-%d-%d", seed, i)
					secrets[secret] = true
					alice.Send(fmt.Sprintf(`{"to":"bob","data":%q,"onlineUserOnly":%v}`, secret, i%20 == 0))
				}
			}
			if h.conn != nil {
				h.conn.Disconnect(0)
			}
			n.WaitClients(2) // mallory's wills, if any were kept, have fired
			// Everything routed before this point has reached the victims.
			for _, d := range []*dev{alice, bob} {
				for _, m := range d.Barrier() {
					checkVictimMessage(t, d.User, m, secrets)
				}
			}
			h.mu.Lock()
			defer h.mu.Unlock()
			for _, got := range h.got {
				for s := range secrets {
					if strings.Contains(got, s) {
						t.Fatalf("mallory received a victim's message: %s", got)
					}
				}
				if !strings.HasPrefix(got, "users/mallory/") {
					t.Fatalf("mallory received on another user's topic: %s", got)
				}
			}
			total += len(h.got)
		})
	}
	// The property holds; and it was not empty: mallory did get her own.
	if total == 0 {
		t.Fatal("mallory received nothing at all: delivery itself is broken")
	}
	t.Logf("8 sequences of 80 operations; mallory received %d messages, all her own", total)
}

// checkVictimMessage: a victim may only see messages the server built from
// an authenticated send (from alice, bob, or mallory herself), or receipts
// and pages for its own requests.
func checkVictimMessage(t *testing.T, user string, m testdevice.Msg, secrets map[string]bool) {
	t.Helper()
	topicUser, kind := protocol.ParseTopic(m.Topic)
	if topicUser != user {
		t.Fatalf("%s received on %s", user, m.Topic)
	}
	if kind == protocol.TopicReply {
		if !strings.Contains(string(m.Payload), `"type":"`) {
			t.Fatalf("%s got a forged reply: %s", user, m.Payload)
		}
		return
	}
	var msg protocol.Message
	if err := json.Unmarshal(m.Payload, &msg); err != nil || msg.ID == "" || msg.ID == "fake" {
		t.Fatalf("%s got a message the server did not build: %s", user, m.Payload)
	}
	var data string
	json.Unmarshal(msg.Data, &data)
	switch msg.From {
	case "alice":
		if !secrets[data] {
			t.Fatalf("%s got a message 'from alice' that alice did not send: %s", user, m.Payload)
		}
	case "mallory":
		if data != "from-mallory" {
			t.Fatalf("%s got an odd message from mallory: %s", user, m.Payload)
		}
	default:
		t.Fatalf("%s got a message from %q: %s", user, msg.From, m.Payload)
	}
}
