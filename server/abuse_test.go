package server_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/imbridge/imbridge/internal/testdevice"
	"github.com/imbridge/imbridge/internal/testserver"
	"github.com/imbridge/imbridge/protocol"
	"github.com/imbridge/imbridge/server"
)

// mqttString encodes a length-prefixed MQTT string.
func mqttString(s string) []byte { return append([]byte{byte(len(s) >> 8), byte(len(s))}, s...) }

// varint encodes an MQTT remaining length.
func varint(n int) []byte {
	var out []byte
	for {
		b := byte(n % 128)
		n /= 128
		if n > 0 {
			b |= 0x80
		}
		out = append(out, b)
		if n == 0 {
			return out
		}
	}
}

func packet(header byte, body []byte) []byte {
	return append(append([]byte{header}, varint(len(body))...), body...)
}

// conn is how a raw CONNECT is built: every field the spec constrains.
type conn struct {
	name     string // protocol name, "MQTT" by default
	version  byte   // 4 by default
	flags    byte   // connect flags beyond username/password, which are set from user/pass
	clientID string
	user     string
	pass     string
	will     bool // add a will topic and payload (set the will flag in flags yourself)
}

func (c conn) bytes() []byte {
	if c.name == "" {
		c.name = "MQTT"
	}
	if c.version == 0 {
		c.version = 4
	}
	flags := c.flags
	if c.user != "" {
		flags |= 0x80
	}
	if c.pass != "" {
		flags |= 0x40
	}
	var b []byte
	b = append(b, mqttString(c.name)...)
	b = append(b, c.version, flags, 0, 30)
	if c.version == 5 {
		b = append(b, 0) // no properties
	}
	b = append(b, mqttString(c.clientID)...)
	if c.will {
		if c.version == 5 {
			b = append(b, 0)
		}
		b = append(b, mqttString("users/x/send")...)
		b = append(b, mqttString("{}")...)
	}
	if c.user != "" {
		b = append(b, mqttString(c.user)...)
	}
	if c.pass != "" {
		b = append(b, mqttString(c.pass)...)
	}
	return packet(0x10, b)
}

// pingreq is an MQTT PINGREQ. Sent after a case's bytes, its PINGRESP says
// at once that the server read them all and kept the connection open.
var pingreq = []byte{0xc0, 0x00}

// outcome reads what the server answers to the bytes sent, followed by a
// PINGREQ: a CONNACK code, a SUBACK's codes, a DISCONNECT, then "still
// open" when the PINGRESP comes or "closed" when the connection closes. A
// server that answers neither within testdevice.Wait is reported as silent.
func outcome(c net.Conn) string {
	c.SetReadDeadline(time.Now().Add(testdevice.Wait))
	var out []string
	buf := make([]byte, 4096)
	var got []byte
	for {
		n, err := c.Read(buf)
		got = append(got, buf[:n]...)
		for len(got) >= 2 {
			l, size := int(got[1]), 1
			if len(got) < 1+size+l {
				break
			}
			body := got[2 : 2+l]
			switch got[0] >> 4 {
			case 2:
				out = append(out, fmt.Sprintf("CONNACK %#02x", body[1]))
			case 9:
				out = append(out, fmt.Sprintf("SUBACK % x", body[2:]))
			case 13: // PINGRESP: everything before the PINGREQ was read
				return strings.Join(append(out, "still open"), ", ")
			case 14:
				code := byte(0)
				if len(body) > 0 {
					code = body[0]
				}
				out = append(out, fmt.Sprintf("DISCONNECT %#02x", code))
			default:
				out = append(out, fmt.Sprintf("packet type %d", got[0]>>4))
			}
			got = got[2+l:]
		}
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				out = append(out, "silent")
			} else if errors.Is(err, io.EOF) || strings.Contains(err.Error(), "reset") {
				out = append(out, "closed")
			} else {
				out = append(out, err.Error())
			}
			return strings.Join(out, ", ")
		}
	}
}

// TestMalformedPackets sends a session of raw, malformed and abusive packets
// to a live node, each on its own connection, checks what each gets, and
// that none takes the server down.
func TestMalformedPackets(t *testing.T) {
	// Dozens of CONNECTs from one IP and user within milliseconds: this test
	// is about packets, not the CONNECT rate limits.
	n := testserver.Start(t, func(c *server.Config) { c.Limits.ConnectRatePerIP, c.Limits.ConnectRatePerUser = -1, -1 })
	tok := n.Token("mal")
	ok4 := conn{clientID: "c", user: "mal", pass: tok}.bytes()
	ok5 := conn{version: 5, clientID: "c5", user: "mal", pass: tok}.bytes()
	subscribe := func(version byte, filters ...string) []byte {
		b := []byte{0x12, 0x34}
		if version == 5 {
			b = append(b, 0)
		}
		for _, f := range filters {
			b = append(append(b, mqttString(f)...), 1)
		}
		return packet(0x82, b)
	}
	cases := []struct {
		name  string
		bytes []byte
		want  string // a prefix of the outcome
	}{
		{"valid 3.1.1 CONNECT", ok4, "CONNACK 0x00, still open"},
		{"valid 5 CONNECT", ok5, "CONNACK 0x00, still open"},
		{"bad protocol name", conn{name: "MQTX", clientID: "c", user: "mal", pass: tok}.bytes(), "CONNACK 0x01, closed"},
		{"bad protocol name (5)", conn{name: "MQTX", version: 5, clientID: "c", user: "mal", pass: tok}.bytes(), "CONNACK 0x84, closed"},
		{"reserved connect flag set (5)", conn{version: 5, flags: 0x01, clientID: "c", user: "mal", pass: tok}.bytes(), "CONNACK 0x81, closed"},
		{"control character in client ID (5)", conn{version: 5, clientID: "a\x01b", user: "mal", pass: tok}.bytes(), "CONNACK 0x85, closed"},
		{"protocol name of 3.1 with version 4", conn{name: "MQIsdp", clientID: "c", user: "mal", pass: tok}.bytes(), "CONNACK 0x01, closed"},
		{"protocol version 6", conn{version: 6, clientID: "c", user: "mal", pass: tok}.bytes(), "CONNACK 0x01, closed"},
		{"reserved connect flag set", conn{flags: 0x01, clientID: "c", user: "mal", pass: tok}.bytes(), "closed"},
		{"will QoS without will flag", conn{flags: 0x08, clientID: "c", user: "mal", pass: tok}.bytes(), "closed"},
		{"will retain without will flag", conn{flags: 0x20, clientID: "c", user: "mal", pass: tok}.bytes(), "closed"},
		{"control character in client ID", conn{clientID: "a\x01b", user: "mal", pass: tok}.bytes(), "CONNACK 0x02, closed"},
		{"empty client ID, persistent (3.1.1)", conn{user: "mal", pass: tok}.bytes(), "CONNACK 0x02, closed"},
		{"no credentials", conn{clientID: "c"}.bytes(), "CONNACK 0x05, closed"},
		{"first packet not CONNECT", packet(0x30, append(mqttString("users/mal/send"), '{', '}')), "closed"},
		{"second CONNECT", append(append([]byte{}, ok4...), ok4...), "CONNACK 0x00, closed"},
		{"remaining length over the packet limit", append(append([]byte{}, ok4...), 0x30, 0xff, 0xff, 0xff, 0x7f), "CONNACK 0x00, closed"},
		{"malformed remaining length", append(append([]byte{}, ok4...), 0x30, 0xff, 0xff, 0xff, 0xff, 0x01), "CONNACK 0x00, closed"},
		{"SUBSCRIBE with an empty filter", append(append([]byte{}, ok4...), subscribe(4, "")...), "CONNACK 0x00, SUBACK 80, still open"},
		{"SUBSCRIBE with a control character", append(append([]byte{}, ok4...), subscribe(4, "users/mal/reply/\x01")...), "CONNACK 0x00, SUBACK 80, still open"},
		{"SUBSCRIBE with NUL in the filter", append(append([]byte{}, ok4...), subscribe(4, "users/mal/inbox\x00")...), "CONNACK 0x00, closed"},
		{"17 subscriptions, limit 16", append(append([]byte{}, ok4...), subscribe(4, manyReplyFilters(17)...)...), "CONNACK 0x00, SUBACK " + strings.Repeat("01 ", 16) + "80, still open"},
		{"PUBLISH to a wildcard topic", append(append([]byte{}, ok4...), packet(0x30, append(mqttString("users/+/send"), '{', '}'))...), "CONNACK 0x00, closed"},
		{"PUBLISH with a topic alias (5)", append(append([]byte{}, ok5...), packet(0x30, append(append(mqttString("users/mal/send"), 3, 0x23, 0, 1), '{', '}'))...), "CONNACK 0x00, DISCONNECT 0x94, closed"},
		{"truncated SUBSCRIBE (5), mochi #501", append(append([]byte{}, ok5...), 0x82, 0x06, 0x12, 0x34, 0x00, 0x00, 0x01, 0x70), "CONNACK 0x00, closed"},
		{"unknown packet type 15 on 3.1.1", append(append([]byte{}, ok4...), 0xf0, 0x00), "CONNACK 0x00, closed"},
		{"garbage", bytes.Repeat([]byte{0xde, 0xad, 0xbe, 0xef}, 64), "closed"},
	}
	var report strings.Builder
	for _, tc := range cases {
		c, err := net.Dial("tcp", n.MQTTAddr())
		if err != nil {
			t.Fatal(err)
		}
		c.Write(tc.bytes)
		c.Write(pingreq) // may fail once the server has closed: the outcome says so
		got := outcome(c)
		c.Close()
		fmt.Fprintf(&report, "| %s | %s |\n", tc.name, got)
		if !strings.HasPrefix(got, tc.want) {
			t.Errorf("%s: got %q, want %q", tc.name, got, tc.want)
		}
	}
	t.Log("\n| packet | outcome |\n|---|---|\n" + report.String())
	// The server is still up and serves.
	alice := v3(t, n, "alice", opts{})
	bob := v3(t, n, "bob", opts{})
	alice.Send(`{"to":"bob","data":"after the abuse"}`)
	bob.Expect(protocol.InboxTopic("bob"))
}

func manyReplyFilters(n int) []string {
	var out []string
	for i := range n {
		out = append(out, fmt.Sprintf("users/mal/reply/%d", i))
	}
	return out
}
