package server

import (
	"bytes"
	"log/slog"
	"net"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/imbridge/imbridge/auth"
	"github.com/imbridge/imbridge/bridge"
)

// connectPacket builds a valid CONNECT of MQTT version 4 or 5 for user with
// token, with mochi's own encoder.
func connectPacket(version byte, user, token string) []byte {
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: version,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 30, ClientIdentifier: "fuzz",
			UsernameFlag: true, Username: []byte(user), PasswordFlag: true, Password: []byte(token)}}
	var buf bytes.Buffer
	if err := pk.ConnectEncode(&buf); err != nil {
		panic(err)
	}
	return buf.Bytes()
}

// FuzzPacketDispatch feeds arbitrary packets, after a valid CONNECT, to a
// real mochi server with the bridge through the same path a listener uses:
// our guard around mochi's EstablishConnection, whose read loop decodes and
// dispatches every packet. Whatever the bytes, no panic may escape the guard
// and the connection must end once its input does. mochi v2.7.9 panics on
// some inputs (its issue #501 among them): the guard turns those into a
// closed connection, counted in panics.
func FuzzPacketDispatch(f *testing.F) {
	secret := []byte("fuzz-secret-0123456789")
	token, _ := auth.Mint(secret, "mal", 24*time.Hour)
	srv := mqtt.New(&mqtt.Options{InlineClient: true, Logger: slog.New(slog.DiscardHandler),
		Capabilities: Config{MaxPayload: 1 << 10}.MochiCapabilities()})
	b, err := bridge.Open(srv, bridge.Config{DBPath: filepath.Join(f.TempDir(), "h.db"), Secret: secret})
	if err != nil {
		f.Fatal(err)
	}
	if err := srv.Serve(); err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { srv.Close(); b.Close() })
	var panics atomic.Int64
	g := &guarded{srv: srv, gate: newGate(Config{MaxPayload: 1 << 10}.withDefaults()), log: slog.New(slog.DiscardHandler), panics: &panics, onDrop: func(*mqtt.Client, error) {},
		conns: newConnSet(DefaultMaxPendingBytes, DefaultWriteTimeout, slog.New(slog.DiscardHandler))}
	establish := g.guard(srv.EstablishConnection)

	f.Add(byte(5), []byte{0x82, 0x06, 0x12, 0x34, 0x00, 0x00, 0x01, 0x70}) // mochi #501
	f.Add(byte(4), []byte{0x82, 0x12, 0x00, 0x01, 0x00, 0x0f, 'u', 's', 'e', 'r', 's', '/', 'm', 'a', 'l', '/', 'i', 'n', 'b', 'o', 'x', 0x01})
	f.Add(byte(4), []byte{0x30, 0x14, 0x00, 0x0e, 'u', 's', 'e', 'r', 's', '/', 'm', 'a', 'l', '/', 's', 'e', 'n', 'd', '{', '}'})
	f.Add(byte(5), []byte{0x32, 0x0a, 0x00, 0x03, 'a', '/', 'b', 0x00, 0x01, 0x02, 0x23, 0x00})
	f.Add(byte(4), []byte{0xc0, 0x00, 0xe0, 0x00})
	f.Fuzz(func(t *testing.T, version byte, input []byte) {
		v := byte(4)
		if version%2 == 1 {
			v = 5
		}
		server, client := net.Pipe()
		done := make(chan struct{})
		go func() {
			defer close(done)
			establish("fuzz", server) // a panic escaping here fails the fuzz run
		}()
		go func() {
			client.SetWriteDeadline(time.Now().Add(time.Second))
			client.Write(connectPacket(v, "mal", token))
			client.Write(input)
			client.Close() // end of input: the read loop must end
		}()
		go func() { // drain what the server writes, so that it never blocks
			buf := make([]byte, 4096)
			for {
				if _, err := client.Read(buf); err != nil {
					return
				}
			}
		}()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("the connection did not end after its input did")
		}
	})
}
