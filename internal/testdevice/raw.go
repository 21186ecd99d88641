package testdevice

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// Raw is a hand-driven MQTT connection, for sending bytes no client library
// would.
type Raw struct {
	net.Conn
	t testing.TB
}

// RawConnect dials addr, sends a CONNECT built from c (protocol version,
// credentials, will...) and returns the connection once the CONNACK says
// success.
func RawConnect(t testing.TB, addr string, version byte, c packets.ConnectParams) *Raw {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, Wait)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if c.ProtocolName == nil {
		c.ProtocolName = []byte("MQTT")
	}
	c.UsernameFlag, c.PasswordFlag = len(c.Username) > 0, len(c.Password) > 0
	if c.Keepalive == 0 {
		c.Keepalive = 30
	}
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: version, Connect: c}
	var buf bytes.Buffer
	if err := pk.ConnectEncode(&buf); err != nil {
		t.Fatal(err)
	}
	r := &Raw{Conn: conn, t: t}
	r.Write(buf.Bytes())
	conn.SetReadDeadline(time.Now().Add(Wait))
	head := make([]byte, 2)
	if _, err := io.ReadFull(conn, head); err != nil || head[0] != 0x20 {
		t.Fatalf("no CONNACK: % x %v", head, err)
	}
	body := make([]byte, head[1])
	if _, err := io.ReadFull(conn, body); err != nil || len(body) < 2 || body[1] != 0 {
		t.Fatalf("CONNACK refused: % x %v", body, err)
	}
	conn.SetReadDeadline(time.Time{})
	return r
}

// Write writes b or fails the test.
func (r *Raw) Write(b []byte) {
	r.t.Helper()
	if _, err := r.Conn.Write(b); err != nil {
		r.t.Fatalf("raw write: %v", err)
	}
}

// WaitClosed waits until the server closes the connection.
func (r *Raw) WaitClosed() {
	r.t.Helper()
	r.Conn.SetReadDeadline(time.Now().Add(Wait))
	if _, err := io.Copy(io.Discard, r.Conn); err != nil {
		r.t.Fatalf("connection not closed by the server within %v: %v", Wait, err)
	}
}

// PublishQoS1 publishes payload to topic at QoS 1 with packet id 0x4242 and
// returns the reason code of its PUBACK (MQTT 5; 0 when the PUBACK has
// none), skipping any other packet that arrives first.
func (r *Raw) PublishQoS1(version byte, topic, payload string) byte {
	r.t.Helper()
	const id = 0x4242
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, ProtocolVersion: version,
		PacketID: id, TopicName: topic, Payload: []byte(payload)}
	var buf bytes.Buffer
	if err := pk.PublishEncode(&buf); err != nil {
		r.t.Fatal(err)
	}
	r.Write(buf.Bytes())
	r.Conn.SetReadDeadline(time.Now().Add(Wait))
	defer r.Conn.SetReadDeadline(time.Time{})
	in := bufio.NewReader(r.Conn)
	for {
		var fh packets.FixedHeader
		b, err := in.ReadByte()
		if err != nil {
			r.t.Fatalf("no PUBACK: %v", err)
		}
		if err := fh.Decode(b); err != nil {
			r.t.Fatal(err)
		}
		n, _, err := packets.DecodeLength(in)
		if err != nil {
			r.t.Fatal(err)
		}
		body := make([]byte, n)
		if _, err := io.ReadFull(in, body); err != nil {
			r.t.Fatal(err)
		}
		if fh.Type == packets.Puback && n >= 2 && body[0] == id>>8 && body[1] == id&0xff {
			if n == 2 {
				return 0
			}
			return body[2]
		}
	}
}

// RawConnectCode sends the CONNECT pk to addr and returns the CONNACK's
// reason (MQTT 5) or return code (3.1.1).
func RawConnectCode(addr string, pk packets.Packet) (byte, error) {
	conn, err := net.DialTimeout("tcp", addr, Wait)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	var buf bytes.Buffer
	if err := pk.ConnectEncode(&buf); err != nil {
		return 0, err
	}
	conn.SetDeadline(time.Now().Add(Wait))
	if _, err := conn.Write(buf.Bytes()); err != nil {
		return 0, err
	}
	head := make([]byte, 2)
	if _, err := io.ReadFull(conn, head); err != nil || head[0] != 0x20 {
		return 0, fmt.Errorf("no CONNACK: % x %v", head, err)
	}
	body := make([]byte, head[1])
	if _, err := io.ReadFull(conn, body); err != nil || len(body) < 2 {
		return 0, fmt.Errorf("short CONNACK: %v", err)
	}
	return body[1], nil
}
