package server

import (
	"context"
	"log/slog"
	"strconv"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"golang.org/x/time/rate"
)

// perMessage lists mochi's log messages that are written once per delivered
// message (and so flood the log under load); they are demoted to debug.
var perMessage = map[string]bool{
	"client store quota reached": true, // a QoS 1 delivery dropped: session inflight full
	"packet ids exhausted":       true,
}

// refusals lists the log messages written once per refused or broken request
// of a device (the bridge's and mochi's). A device can cause them as often as
// it likes, so each is written at a bounded rate: refusalBurst at once, then
// refusalRate per second. The first line written after some were dropped
// says how many, in "suppressed".
var refusals = map[string]bool{
	"connection refused":                             true, // bridge: bad token, limits, spec-breaking CONNECT
	"subscription refused":                           true, // bridge: ACL
	"subscription refused: limit reached":            true,
	"closing MQTT 3.1.1 connection: send not stored": true, // bridge: store failure or send rate
	"send shed":                                      true, // bridge: send rate
	"error processing packet":                        true, // mochi: a packet broke the protocol
	"packet rejected":                                true, // mochi: a hook refused a packet
	"publish packet rejected":                        true, // mochi: the ACL refused a PUBLISH
	"publish packet error":                           true, // mochi: a hook failed a PUBLISH
	mqtt.ErrMinimumKeepalive.Error():                 true, // mochi: CONNECT with keepalive 0
	"connection handler panicked; connection closed": true, // our guard (listeners.go)
	"connection ended":                               true, // our guard, at debug
}

// Rate of each kind of refusal line; see refusals.
const (
	refusalRate  = 1  // lines per second, per message
	refusalBurst = 10 // lines at once, per message
)

// logHandler passes the node's records, mochi's included, to h with three
// rules, so that the log says what a person needs and nothing a device sent:
//
//   - mochi's per-message warnings (perMessage) are demoted to debug;
//   - packets and wills, which mochi logs as whole structs (payloads and
//     CONNECT passwords included), become a summary without payload or
//     password, and any []byte attribute becomes its length, at every level;
//   - refusals (the refusals list) are rate limited.
type logHandler struct {
	h       slog.Handler
	limiter *refusalLimiter // shared by every handler derived with WithAttrs and WithGroup
}

func newLogHandler(h slog.Handler) logHandler {
	return logHandler{h: h, limiter: &refusalLimiter{now: time.Now, kinds: map[string]*refusalKind{}}}
}

func (d logHandler) Enabled(ctx context.Context, l slog.Level) bool { return d.h.Enabled(ctx, l) }

func (d logHandler) Handle(ctx context.Context, r slog.Record) error {
	if perMessage[r.Message] {
		if !d.h.Enabled(ctx, slog.LevelDebug) {
			return nil
		}
		r.Level = slog.LevelDebug
	}
	if r.Message == "" { // mochi's listeners log accept errors without a message
		r.Message = "listener error"
	}
	var suppressed int
	if refusals[r.Message] {
		ok, n := d.limiter.allow(r.Message)
		if !ok {
			return nil
		}
		suppressed = n
	}
	clean := true
	r.Attrs(func(a slog.Attr) bool {
		if !isClean(a) {
			clean = false
		}
		return clean
	})
	if !clean {
		out := slog.NewRecord(r.Time, r.Level, r.Message, r.PC)
		r.Attrs(func(a slog.Attr) bool {
			out.AddAttrs(sanitize(a))
			return true
		})
		r = out
	}
	if suppressed > 0 {
		r.AddAttrs(slog.Int("suppressed", suppressed))
	}
	return d.h.Handle(ctx, r)
}

func (d logHandler) WithAttrs(as []slog.Attr) slog.Handler {
	clean := make([]slog.Attr, len(as))
	for i, a := range as {
		clean[i] = sanitize(a)
	}
	return logHandler{d.h.WithAttrs(clean), d.limiter}
}

func (d logHandler) WithGroup(g string) slog.Handler { return logHandler{d.h.WithGroup(g), d.limiter} }

// isClean reports whether a holds nothing sanitize would change.
func isClean(a slog.Attr) bool {
	switch a.Value.Kind() {
	case slog.KindAny:
		switch a.Value.Any().(type) {
		case packets.Packet, *packets.Packet, mqtt.Will, *mqtt.Will, []byte:
			return false
		}
	case slog.KindGroup:
		for _, g := range a.Value.Group() {
			if !isClean(g) {
				return false
			}
		}
	case slog.KindLogValuer:
		return false
	}
	return true
}

// sanitize returns a with packets, wills and byte slices summarised.
func sanitize(a slog.Attr) slog.Attr {
	a.Value = a.Value.Resolve()
	switch a.Value.Kind() {
	case slog.KindAny:
		switch v := a.Value.Any().(type) {
		case packets.Packet:
			a.Value = packetSummary(&v)
		case *packets.Packet:
			if v != nil {
				a.Value = packetSummary(v)
			}
		case mqtt.Will:
			a.Value = willSummary(&v)
		case *mqtt.Will:
			if v != nil {
				a.Value = willSummary(v)
			}
		case []byte:
			a.Value = slog.StringValue(byteCount(len(v)))
		}
	case slog.KindGroup:
		g := a.Value.Group()
		out := make([]slog.Attr, len(g))
		for i, x := range g {
			out[i] = sanitize(x)
		}
		a.Value = slog.GroupValue(out...)
	}
	return a
}

func byteCount(n int) string { return "(" + strconv.Itoa(n) + " bytes)" }

// packetSummary is what a person reading the log needs of a packet: its type,
// the topic or filters, its id and QoS, and the size of its payload. Never
// the payload, nor a CONNECT's password.
func packetSummary(pk *packets.Packet) slog.Value {
	as := []slog.Attr{slog.String("type", packets.PacketNames[pk.FixedHeader.Type])}
	if pk.TopicName != "" {
		as = append(as, slog.String("topic", pk.TopicName))
	}
	if len(pk.Filters) > 0 {
		fs := make([]string, len(pk.Filters))
		for i, f := range pk.Filters {
			fs[i] = f.Filter
		}
		as = append(as, slog.Any("filters", fs))
	}
	if pk.FixedHeader.Type == packets.Connect {
		as = append(as, slog.String("client", pk.Connect.ClientIdentifier),
			slog.String("username", string(pk.Connect.Username)), slog.Int("version", int(pk.ProtocolVersion)))
	}
	if pk.PacketID != 0 {
		as = append(as, slog.Int("id", int(pk.PacketID)))
	}
	if pk.FixedHeader.Type == packets.Publish {
		as = append(as, slog.Int("qos", int(pk.FixedHeader.Qos)), slog.Int("payload_bytes", len(pk.Payload)))
	}
	return slog.GroupValue(as...)
}

// willSummary is a will message without its payload.
func willSummary(w *mqtt.Will) slog.Value {
	return slog.GroupValue(slog.String("topic", w.TopicName), slog.Int("qos", int(w.Qos)),
		slog.Int("payload_bytes", len(w.Payload)))
}

// refusalLimiter rate limits the refusal lines, per message.
type refusalLimiter struct {
	now   func() time.Time // time.Now; tests set their own
	mu    sync.Mutex       // guards kinds
	kinds map[string]*refusalKind
	// kinds holds at most len(refusals) entries: the keys are those messages.
}

type refusalKind struct {
	bucket  *rate.Limiter
	dropped int // lines dropped since the last one written
}

// allow reports whether a line with message msg may be written now and, if
// so, how many were dropped before it.
func (l *refusalLimiter) allow(msg string) (bool, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	k := l.kinds[msg]
	if k == nil {
		k = &refusalKind{bucket: rate.NewLimiter(refusalRate, refusalBurst)}
		l.kinds[msg] = k
	}
	if !k.bucket.AllowN(l.now(), 1) {
		k.dropped++
		return false, 0
	}
	n := k.dropped
	k.dropped = 0
	return true, n
}
