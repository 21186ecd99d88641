package main

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/imbridge/imbridge/auth"
	"github.com/imbridge/imbridge/protocol"
)

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// wire says how a scenario's messages travel on one kind of server: through
// imbridge's send topic and rules, or straight between topics on bare mochi.
// Payloads are the same JSON on both, so that sizes and parsing match.
type wire struct{ t *target }

func (w wire) bridge() bool { return w.t.kind == kindBridge }

// pubTopic is where `from` publishes a message for `to`.
func (w wire) pubTopic(from, to string, online bool) string {
	if w.bridge() {
		return protocol.SendTopic(from)
	}
	if online {
		return "bench/" + to + "/online"
	}
	return "bench/" + to + "/inbox"
}

// filter is what `user`'s devices subscribe to for one kind of message.
func (w wire) filter(user string, online bool) string {
	switch {
	case w.bridge() && online:
		return protocol.OnlineFilter(user)
	case w.bridge():
		return protocol.InboxTopic(user)
	case online:
		return "$share/" + user + "/bench/" + user + "/online"
	default:
		return "bench/" + user + "/inbox"
	}
}

// payload is a send request carrying its send time in data.t.
func (w wire) payload(to string, online bool, pad string) []byte {
	return fmt.Appendf(nil, `{"to":%q,"onlineUserOnly":%v,"data":{"t":%d,"p":%q}}`, to, online, time.Now().UnixNano(), pad)
}

// sentAt reads data.t back out of a delivered message (or a bare payload).
func sentAt(payload []byte) (int64, bool) {
	i := bytes.Index(payload, []byte(`"t":`))
	if i < 0 {
		return 0, false
	}
	rest := payload[i+4:]
	end := 0
	for end < len(rest) && rest[end] >= '0' && rest[end] <= '9' {
		end++
	}
	v, err := strconv.ParseInt(string(rest[:end]), 10, 64)
	return v, err == nil
}

// password returns the MQTT password for user: a token on imbridge.
func (w wire) password(user string) string {
	if !w.bridge() {
		return "x"
	}
	tok, err := auth.Mint(w.t.secret, user, time.Hour)
	if err != nil {
		panic(err)
	}
	return tok
}

// dial connects a paho device and subscribes to filters (QoS in the map).
func (w wire) dial(user, clientID string, clean bool, filters map[string]byte, h paho.MessageHandler) (paho.Client, error) {
	opts := paho.NewClientOptions().AddBroker("tcp://" + w.t.MQTT).SetClientID(clientID).
		SetUsername(user).SetPassword(w.password(user)).SetCleanSession(clean).
		SetAutoReconnect(false).SetKeepAlive(60 * time.Second).SetOrderMatters(false).
		SetMaxResumePubInFlight(0).SetWriteTimeout(30 * time.Second)
	c := paho.NewClient(opts)
	if tok := c.Connect(); !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
		return nil, fmt.Errorf("connect %s: %v", clientID, tok.Error())
	}
	if len(filters) > 0 {
		if tok := c.SubscribeMultiple(filters, h); !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
			return nil, fmt.Errorf("subscribe %s: %v", clientID, tok.Error())
		}
	}
	return c, nil
}

// rawDial opens an idle MQTT 3.1.1 connection with two subscriptions, using
// no goroutine of its own: the capacity scenario holds thousands.
func (w wire) rawDial(user, clientID string, filters ...string) (net.Conn, error) {
	conn, err := net.DialTimeout("tcp", w.t.MQTT, 30*time.Second)
	if err != nil {
		return nil, err
	}
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	var buf bytes.Buffer
	connect := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 4,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 0, ClientIdentifier: clientID,
			UsernameFlag: true, Username: []byte(user), PasswordFlag: true, Password: []byte(w.password(user))}}
	connect.ConnectEncode(&buf)
	var subs packets.Subscriptions
	for _, f := range filters {
		subs = append(subs, packets.Subscription{Filter: f, Qos: 1})
	}
	sub := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, ProtocolVersion: 4, PacketID: 1, Filters: subs}
	sub.SubscribeEncode(&buf)
	if _, err := conn.Write(buf.Bytes()); err != nil {
		conn.Close()
		return nil, err
	}
	// CONNACK (4 bytes), then SUBACK (2 + 2 + one code per filter).
	ack := make([]byte, 4+4+len(filters))
	if _, err := io.ReadFull(conn, ack); err != nil || ack[0] != 0x20 || ack[3] != 0 || ack[4] != 0x90 {
		conn.Close()
		return nil, fmt.Errorf("connect %s: % x %v", clientID, ack, err)
	}
	for _, code := range ack[8:] {
		if code >= 0x80 {
			conn.Close()
			return nil, fmt.Errorf("subscription of %s refused", clientID)
		}
	}
	conn.SetDeadline(time.Time{})
	return conn, nil
}

// latencies collects one-way latencies from delivered payloads.
type latencies struct {
	mu  sync.Mutex // guards all
	all []time.Duration
	n   atomic.Int64
}

func (l *latencies) record(payload []byte) {
	l.n.Add(1)
	if t, ok := sentAt(payload); ok {
		d := time.Duration(time.Now().UnixNano() - t)
		l.mu.Lock()
		l.all = append(l.all, d)
		l.mu.Unlock()
	}
}

func (l *latencies) add(d time.Duration) {
	l.mu.Lock()
	l.all = append(l.all, d)
	l.mu.Unlock()
}

// sorted returns the samples in ascending order.
func (l *latencies) sorted() []time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := slices.Clone(l.all)
	slices.Sort(s)
	return s
}

// pct returns the p-th percentile (0-100) of sorted samples, NaN if none.
func pct(sorted []time.Duration, p float64) float64 {
	if len(sorted) == 0 {
		return math.NaN()
	}
	i := int(math.Ceil(p/100*float64(len(sorted)))) - 1
	return float64(sorted[max(0, min(i, len(sorted)-1))]) / float64(time.Microsecond)
}

// waitCount waits until count() reaches want or stops growing for quiet.
func waitCount(count func() int64, want int64, quiet time.Duration) {
	last, since := count(), time.Now()
	for {
		c := count()
		if c >= want {
			return
		}
		if c != last {
			last, since = c, time.Now()
		} else if time.Since(since) > quiet {
			return
		}
		time.Sleep(5 * time.Millisecond) // a load tool polling a counter, not a test
	}
}
