package server

import (
	"bytes"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

func TestLogHandlerDemotes(t *testing.T) {
	var buf bytes.Buffer
	info := slog.New(newLogHandler(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo})))
	info.Warn("client store quota reached", "client", "a/b")
	info.Warn("error processing packet")
	if out := buf.String(); strings.Contains(out, "quota") || !strings.Contains(out, "error processing packet") {
		t.Fatalf("info log:\n%s", out)
	}
	buf.Reset()
	debug := slog.New(newLogHandler(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))).With("component", "mochi")
	debug.Warn("client store quota reached")
	if out := buf.String(); !strings.Contains(out, "level=DEBUG") || !strings.Contains(out, "component=mochi") {
		t.Fatalf("debug log:\n%s", out)
	}
}

// TestLogHandlerHidesPayloads logs the records mochi writes with whole
// packets and wills in them, at debug: the lines name the packet type, topic,
// filters and sizes, never a payload or a CONNECT password.
func TestLogHandlerHidesPayloads(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(newLogHandler(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})))
	publish := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, TopicName: "users/bob/send",
		PacketID: 7, Payload: []byte(`{"to":"alice","data":"PAYLOAD-MARK"}`)}
	connect := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 5,
		Connect: packets.ConnectParams{ClientIdentifier: "phone", Username: []byte("bob"), Password: []byte("TOKEN-MARK"), WillPayload: []byte("WILL-MARK")}}
	subscribe := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe}, PacketID: 9,
		Filters: packets.Subscriptions{{Filter: "users/bob/inbox"}, {Filter: "users/alice/inbox"}}}
	log.Warn("error processing packet", "error", "x", "client", "phone", "pk", publish)
	log.Debug("packet rejected", "hook", "imbridge", "packet", connect)
	log.Debug("publish packet rejected", "packet", &publish)
	log.Debug("failed publishing packet", "packet", subscribe)
	log.Error("parse will error", "will", mqtt.Will{TopicName: "users/bob/send", Payload: []byte("WILL-MARK")})
	log.With("raw", []byte("BYTES-MARK")).Info("something", slog.Group("g", "pk", publish))
	out := buf.String()
	for _, secret := range []string{"PAYLOAD-MARK", "TOKEN-MARK", "WILL-MARK", "BYTES-MARK"} {
		if strings.Contains(out, secret) || strings.Contains(out, strings.Trim(fmt.Sprint([]byte(secret)), "[]")) {
			t.Errorf("the log holds %s:\n%s", secret, out)
		}
	}
	for _, want := range []string{
		"pk.type=Publish pk.topic=users/bob/send pk.id=7 pk.qos=1 pk.payload_bytes=36",
		"packet.type=Connect packet.client=phone packet.username=bob packet.version=5",
		`packet.filters="[users/bob/inbox users/alice/inbox]" packet.id=9`,
		"will.topic=users/bob/send will.qos=0 will.payload_bytes=9",
		`raw="(10 bytes)"`, "g.pk.payload_bytes=36",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the log lacks %q:\n%s", want, out)
		}
	}
}

// TestLogHandlerRateLimitsRefusals: a device refused a thousand times in a
// second gets refusalBurst lines, then one a second, each saying how many
// were dropped before it; other lines are not limited.
func TestLogHandlerRateLimitsRefusals(t *testing.T) {
	var buf bytes.Buffer
	h := newLogHandler(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo}))
	now := time.Unix(1e9, 0)
	h.limiter.now = func() time.Time { return now }
	log := slog.New(h).With("component", "bridge") // a derived handler shares the limit
	lines := func(msg string) int { return strings.Count(buf.String(), `msg="`+msg+`"`) }
	for range 1000 {
		log.Info("connection refused", "reason", "bad token")
		slog.New(h).Info("device connected")
	}
	if got := lines("connection refused"); got != refusalBurst {
		t.Fatalf("%d refusal lines for 1000 refusals at once, want %d", got, refusalBurst)
	}
	if got := lines("device connected"); got != 1000 {
		t.Fatalf("%d lines of another message, want all 1000", got)
	}
	now = now.Add(time.Second)
	log.Info("connection refused", "reason", "bad token")
	if got := lines("connection refused"); got != refusalBurst+1 || !strings.Contains(buf.String(), "suppressed=990") {
		t.Fatalf("a second later: %d lines, want %d, the last with suppressed=990:\n%s", got, refusalBurst+1, buf.String()[buf.Len()-300:])
	}
	// Each kind of refusal has its own budget.
	log.Info("subscription refused")
	if lines("subscription refused") != 1 {
		t.Fatal("a flood of one refusal silenced another")
	}
}
