package bridge

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/imbridge/imbridge/protocol"
)

// benchBridge returns a bridge on a mochi server without listeners, with
// bob's five devices registered and holding the shared online subscription
// (connections are nil: mochi counts them connected and skips the write).
func benchBridge(b *testing.B) *Bridge {
	b.Helper()
	srv := mqtt.New(&mqtt.Options{InlineClient: true, Logger: discard()})
	br, err := Open(srv, Config{DBPath: filepath.Join(b.TempDir(), "h.db"), Secret: []byte("0123456789abcdef")})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { srv.Close(); br.Close() })
	for i := range 5 {
		cl := srv.NewClient(nil, "bench", fmt.Sprintf("bob/dev%d", i), false)
		srv.Clients.Add(cl)
		br.OnSessionEstablished(cl, packets.Packet{})
		srv.Topics.Subscribe(cl.ID, packets.Subscription{Filter: protocol.OnlineFilter("bob")})
	}
	return br
}

func BenchmarkSelectSubscribers(b *testing.B) {
	br := benchBridge(b)
	pk := packets.Packet{TopicName: protocol.OnlineTopic("bob"), Payload: []byte(`{"id":"x"}`)}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		subs := br.srv.Topics.Subscribers(pk.TopicName)
		if br.OnSelectSubscribers(subs, pk); len(subs.SharedSelected) != 1 {
			b.Fatal("no device selected")
		}
	}
}

// BenchmarkSendOnline is the routing of one online-only message: decode,
// encode, pick a device, hand it over (without the socket write).
func BenchmarkSendOnline(b *testing.B) {
	br := benchBridge(b)
	payload := []byte(`{"to":"bob","onlineUserOnly":true,"data":{"command":"textInput"}}`)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		req, perr := protocol.DecodeSendRequest(payload)
		if perr != nil {
			b.Fatal(perr)
		}
		if r := br.Send(context.Background(), "alice", req); r.Status != protocol.StatusDelivered {
			b.Fatalf("status %s", r.Status)
		}
	}
}
