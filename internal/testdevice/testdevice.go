// Package testdevice drives imbridge from tests as devices do: real MQTT
// clients (paho for MQTT 3.1.1, paho.golang for MQTT 5) over loopback TCP.
// Every wait has a deadline; nothing sleeps.
package testdevice

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"log"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	pahov5 "github.com/eclipse/paho.golang/paho"
	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/imbridge/imbridge/protocol"
)

// Wait is the deadline of every expectation.
const Wait = 10 * time.Second

// Msg is one received PUBLISH.
type Msg struct {
	Topic       string
	Payload     []byte
	QoS         byte
	Correlation []byte // MQTT 5 correlation data
}

// Message decodes the payload as a protocol.Message.
func (m Msg) Message(t testing.TB) protocol.Message {
	t.Helper()
	var v protocol.Message
	if err := json.Unmarshal(m.Payload, &v); err != nil {
		t.Fatalf("decode message on %s: %v: %s", m.Topic, err, m.Payload)
	}
	return v
}

// Receipt decodes the payload as a protocol.Receipt.
func (m Msg) Receipt(t testing.TB) protocol.Receipt {
	t.Helper()
	var v protocol.Receipt
	if err := json.Unmarshal(m.Payload, &v); err != nil || v.Type != "receipt" {
		t.Fatalf("not a receipt on %s: %v: %s", m.Topic, err, m.Payload)
	}
	return v
}

// Page decodes the payload as a protocol.Page.
func (m Msg) Page(t testing.TB) protocol.Page {
	t.Helper()
	var v protocol.Page
	if err := json.Unmarshal(m.Payload, &v); err != nil {
		t.Fatalf("not a page on %s: %v: %s", m.Topic, err, m.Payload)
	}
	return v
}

// Device is one connected test device of a user.
type Device struct {
	t        testing.TB
	User     string
	ClientID string
	Msgs     chan Msg // everything received, in order, but other devices' barrier answers
	held     []Msg    // received by Expect while waiting for another topic; owned by the test goroutine

	v3 paho.Client
	v5 *pahov5.Client
}

// Options of a device connection.
type Options struct {
	ClientID string // default: a fresh unique id
	// NoClientID sends an empty client ID (with Clean: the server assigns one).
	NoClientID bool
	Clean      bool   // clean session (3.1.1) / clean start with expiry 0 (5)
	Password   string // the token; default: a valid one from Token
	// Subscribe lists filters to subscribe to after connecting; nil means the
	// standard three: inbox, shared online filter, reply.
	Subscribe []string
	// Token mints a token for the user.
	Token func(user string) string
	// TLS configures ssl:// and wss:// brokers (MQTT 3.1.1 devices).
	TLS *tls.Config
}

func (o *Options) fill(user string) {
	if o.ClientID == "" && !o.NoClientID {
		o.ClientID = fmt.Sprintf("dev-%d", time.Now().UnixNano())
	}
	if o.Password == "" {
		o.Password = o.Token(user)
	}
	if o.Subscribe == nil {
		o.Subscribe = Standard(user)
	}
}

// Standard returns the filters every device subscribes to.
func Standard(user string) []string {
	return []string{protocol.InboxTopic(user), protocol.OnlineFilter(user), protocol.ReplyTopic(user)}
}

// ConnectV3 connects an MQTT 3.1.1 device and subscribes; it fails the test
// on any error.
func ConnectV3(t testing.TB, url, user string, o Options) *Device {
	t.Helper()
	d, err := DialV3(t, url, user, o)
	if err != nil {
		t.Fatalf("connect %s: %v", user, err)
	}
	return d
}

// DialV3 connects an MQTT 3.1.1 device and subscribes, returning errors.
func DialV3(t testing.TB, url, user string, o Options) (*Device, error) {
	t.Helper()
	o.fill(user)
	d := &Device{t: t, User: user, ClientID: o.ClientID, Msgs: make(chan Msg, 4096)}
	opts := paho.NewClientOptions().AddBroker(url).SetClientID(o.ClientID).
		SetUsername(user).SetPassword(o.Password).SetCleanSession(o.Clean).
		SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(Wait).
		SetProtocolVersion(4).SetKeepAlive(30 * time.Second).SetTLSConfig(o.TLS)
	opts.SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) {
		d.deliver(Msg{Topic: m.Topic(), Payload: m.Payload(), QoS: m.Qos()})
	})
	d.v3 = paho.NewClient(opts)
	if tok := d.v3.Connect(); !tok.WaitTimeout(Wait) || tok.Error() != nil {
		return nil, fmt.Errorf("connect: %v", tok.Error())
	}
	t.Cleanup(d.Close)
	if len(o.Subscribe) > 0 {
		filters := map[string]byte{}
		for _, f := range o.Subscribe {
			filters[f] = 1
		}
		tok := d.v3.SubscribeMultiple(filters, nil)
		if !tok.WaitTimeout(Wait) || tok.Error() != nil {
			return nil, fmt.Errorf("subscribe: %v", tok.Error())
		}
		for f, code := range tok.(*paho.SubscribeToken).Result() {
			if code >= 0x80 {
				return nil, fmt.Errorf("subscribe %s refused: %#x", f, code)
			}
		}
	}
	return d, nil
}

// SubscribeV3 subscribes to one filter and returns the SUBACK code.
func (d *Device) SubscribeV3(filter string) byte {
	d.t.Helper()
	tok := d.v3.Subscribe(filter, 1, nil)
	if !tok.WaitTimeout(Wait) || tok.Error() != nil {
		d.t.Fatalf("subscribe %s: %v", filter, tok.Error())
	}
	// paho keys the result of a $share filter by its topic part: take the
	// only entry.
	for _, code := range tok.(*paho.SubscribeToken).Result() {
		return code
	}
	d.t.Fatalf("subscribe %s: no SUBACK code", filter)
	return 0
}

// ConnectV5 connects an MQTT 5 device and subscribes.
func ConnectV5(t testing.TB, addr, user string, o Options) *Device {
	t.Helper()
	o.fill(user)
	d := &Device{t: t, User: user, ClientID: o.ClientID, Msgs: make(chan Msg, 4096)}
	conn, err := net.DialTimeout("tcp", strings.TrimPrefix(addr, "tcp://"), Wait)
	if err != nil {
		t.Fatal(err)
	}
	d.v5 = pahov5.NewClient(pahov5.ClientConfig{
		Conn: conn,
		OnPublishReceived: []func(pahov5.PublishReceived) (bool, error){func(r pahov5.PublishReceived) (bool, error) {
			m := Msg{Topic: r.Packet.Topic, Payload: r.Packet.Payload, QoS: r.Packet.QoS}
			if r.Packet.Properties != nil {
				m.Correlation = r.Packet.Properties.CorrelationData
			}
			d.deliver(m)
			return true, nil
		}},
	})
	if os.Getenv("PAHO_DEBUG") != "" {
		d.v5.SetDebugLogger(log.New(os.Stderr, "paho ", 0))
	}
	var expiry uint32 = 3600
	if o.Clean {
		expiry = 0
	}
	ctx, cancel := context.WithTimeout(context.Background(), Wait)
	defer cancel()
	ack, err := d.v5.Connect(ctx, &pahov5.Connect{
		ClientID: o.ClientID, KeepAlive: 30, CleanStart: o.Clean,
		Username: user, UsernameFlag: true, Password: []byte(o.Password), PasswordFlag: true,
		Properties: &pahov5.ConnectProperties{SessionExpiryInterval: &expiry, RequestProblemInfo: true},
	})
	if err != nil {
		t.Fatalf("connect v5 %s: %v (%+v)", user, err, ack)
	}
	t.Cleanup(d.Close)
	if len(o.Subscribe) > 0 {
		var subs []pahov5.SubscribeOptions
		for _, f := range o.Subscribe {
			subs = append(subs, pahov5.SubscribeOptions{Topic: f, QoS: 1})
		}
		sa, err := d.v5.Subscribe(ctx, &pahov5.Subscribe{Subscriptions: subs})
		if err != nil {
			t.Fatalf("subscribe v5: %v", err)
		}
		for i, code := range sa.Reasons {
			if code >= 0x80 {
				t.Fatalf("subscribe %s refused: %#x", o.Subscribe[i], code)
			}
		}
	}
	return d
}

// Publish publishes payload to topic at qos and waits for the PUBACK.
func (d *Device) Publish(topic string, qos byte, payload string) {
	d.t.Helper()
	if d.v5 != nil {
		d.PublishV5(topic, qos, payload, nil)
		return
	}
	tok := d.v3.Publish(topic, qos, false, payload)
	if !tok.WaitTimeout(Wait) || tok.Error() != nil {
		d.t.Fatalf("publish %s: %v", topic, tok.Error())
	}
}

// PublishV5 publishes with MQTT 5 properties and returns the PUBACK reason
// code (0 for QoS 0).
func (d *Device) PublishV5(topic string, qos byte, payload string, props *pahov5.PublishProperties) byte {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), Wait)
	defer cancel()
	resp, err := d.v5.Publish(ctx, &pahov5.Publish{Topic: topic, QoS: qos, Payload: []byte(payload), Properties: props})
	if resp != nil {
		return resp.ReasonCode
	}
	if err != nil {
		d.t.Fatalf("publish v5 %s: %v", topic, err)
	}
	return 0
}

// Send publishes a send request (QoS 1) to the device's own send topic.
func (d *Device) Send(req string) { d.t.Helper(); d.Publish(protocol.SendTopic(d.User), 1, req) }

// Expect waits for the next message on topic. Messages on other topics that
// come first are held for later Expects (the server orders each topic, not
// the topics among themselves); ExpectQuiet fails on any still held.
func (d *Device) Expect(topic string) Msg {
	d.t.Helper()
	for i, m := range d.held {
		if m.Topic == topic {
			d.held = append(d.held[:i], d.held[i+1:]...)
			return m
		}
	}
	deadline := time.After(Wait)
	for {
		select {
		case m := <-d.Msgs:
			if m.Topic == topic {
				return m
			}
			d.held = append(d.held, m)
		case <-deadline:
			d.t.Fatalf("%s: no message on %s within %v (holding %d on other topics)", d.ClientID, topic, Wait, len(d.held))
			return Msg{}
		}
	}
}

// Barrier proves that nothing is queued for the device: it asks for a sync
// page with a fresh id and returns everything received before the answer.
// mochi writes to each device in order, so a message routed to this device
// before Barrier was called is in the result.
func (d *Device) Barrier() []Msg {
	d.t.Helper()
	id := fmt.Sprintf("%s%s-%d", barrierPrefix, d.ClientID, time.Now().UnixNano())
	d.Publish(protocol.SyncTopic(d.User), 1, `{"id":"`+id+`","after":0,"limit":1}`)
	before := d.held
	d.held = nil
	deadline := time.After(Wait)
	for {
		select {
		case m := <-d.Msgs:
			if m.Topic == protocol.ReplyTopic(d.User) && strings.Contains(string(m.Payload), `"id":"`+id+`"`) {
				return before
			}
			before = append(before, m)
		case <-deadline:
			d.t.Fatalf("%s: barrier answer did not come within %v", d.ClientID, Wait)
		}
	}
}

// barrierPrefix starts the id of every barrier request. Answers go to all of
// a user's devices; each device drops those of the others.
const barrierPrefix = "barrier-"

func (d *Device) deliver(m Msg) {
	if m.Topic == protocol.ReplyTopic(d.User) && strings.Contains(string(m.Payload), `"id":"`+barrierPrefix) &&
		!strings.Contains(string(m.Payload), `"id":"`+barrierPrefix+d.ClientID+"-") {
		return
	}
	d.Msgs <- m
}

// ExpectQuiet runs a Barrier and fails if anything arrived before it.
func (d *Device) ExpectQuiet() {
	d.t.Helper()
	if got := d.Barrier(); len(got) > 0 {
		d.t.Fatalf("%s: expected nothing, got %d messages, first on %s: %s", d.ClientID, len(got), got[0].Topic, got[0].Payload)
	}
}

// Connected reports whether the client still has its connection.
func (d *Device) Connected() bool {
	if d.v3 != nil {
		return d.v3.IsConnectionOpen()
	}
	select {
	case <-d.v5.Done():
		return false
	default:
		return true
	}
}

// Close disconnects the device (idempotent).
func (d *Device) Close() {
	if d.v3 != nil && d.v3.IsConnected() {
		d.v3.Disconnect(100)
	}
	if d.v5 != nil {
		select {
		case <-d.v5.Done():
		default:
			_ = d.v5.Disconnect(&pahov5.Disconnect{ReasonCode: 0})
		}
	}
}

// PublishRetained publishes with the retain flag at QoS 1 (MQTT 3.1.1
// devices) and waits for the PUBACK.
func (d *Device) PublishRetained(topic, payload string) {
	d.t.Helper()
	tok := d.v3.Publish(topic, 1, true, payload)
	if !tok.WaitTimeout(Wait) || tok.Error() != nil {
		d.t.Fatalf("publish %s: %v", topic, tok.Error())
	}
}
