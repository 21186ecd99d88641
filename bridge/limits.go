package bridge

import (
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/imbridge/imbridge/protocol"
)

// buckets is a set of token buckets (golang.org/x/time/rate) keyed by IP or
// user, created on first use and forgotten once idle and full again, so that
// memory follows the active keys only.
type buckets struct {
	rate  rate.Limit
	burst int

	mu    sync.Mutex         // guards m and swept
	m     map[string]*bucket // at most maxBucketKeys entries
	swept time.Time
}

// maxBucketKeys bounds the keys of one set of buckets (about 150 bytes
// each). Past it, idle full buckets are swept at once, and while the set is
// still full a new key gets a fresh bucket that is not remembered: a flood
// of distinct keys costs no memory, and each key still gets at most one burst
// per attempt pattern of the busiest keys.
const maxBucketKeys = 100_000

type bucket struct {
	lim  *rate.Limiter
	used time.Time
}

// newBuckets returns buckets of perSecond tokens and the given burst; nil
// (no limit) when perSecond is 0.
func newBuckets(perSecond float64, burst int) *buckets {
	if perSecond == 0 {
		return nil
	}
	return &buckets{rate: rate.Limit(perSecond), burst: burst, m: map[string]*bucket{}, swept: time.Now()}
}

// get returns key's limiter. A nil *buckets has none.
func (b *buckets) get(key string) *rate.Limiter {
	now := time.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	if now.Sub(b.swept) > time.Minute || len(b.m) >= maxBucketKeys {
		b.sweep(now)
	}
	e := b.m[key]
	if e == nil {
		e = &bucket{lim: rate.NewLimiter(b.rate, b.burst)}
		if len(b.m) >= maxBucketKeys {
			return e.lim
		}
		b.m[key] = e
	}
	e.used = now
	return e.lim
}

// sweep forgets the buckets idle for a minute and full again. b.mu is held.
func (b *buckets) sweep(now time.Time) {
	for k, e := range b.m {
		if now.Sub(e.used) > time.Minute && e.lim.TokensAt(now) >= float64(b.burst) {
			delete(b.m, k)
		}
	}
	b.swept = now
}

// exhausted reports whether key's bucket has no token left, without taking
// one and without creating state for a key it does not know. A nil *buckets
// is never exhausted.
func (b *buckets) exhausted(key string) bool {
	if b == nil {
		return false
	}
	b.mu.Lock()
	e := b.m[key]
	b.mu.Unlock()
	return e != nil && e.lim.Tokens() < 1
}

// allow takes one token for key. A nil *buckets always allows.
func (b *buckets) allow(key string) bool {
	return b == nil || b.get(key).Allow()
}

// reserve is the share of a send bucket that must stay free for a send of
// each priority to be let through: under load, low goes first, then
// normal (and default), and high last.
var reserve = map[protocol.Priority]float64{
	protocol.PriorityLow: 0.5, protocol.PriorityNormal: 0.2, protocol.PriorityDefault: 0.2, "": 0.2, protocol.PriorityHigh: 0,
}

// allowSend takes a token for a send of user at priority p, if enough are
// left for that priority. A nil *buckets always allows.
func (b *buckets) allowSend(user string, p protocol.Priority) bool {
	if b == nil {
		return true
	}
	lim := b.get(user)
	now := time.Now()
	if lim.TokensAt(now) < 1+reserve[p]*float64(b.burst) {
		return false
	}
	return lim.AllowN(now, 1)
}

// ipKey returns the key of a remote address for per-IP limits: the IPv4
// address, or the /64 prefix of an IPv6 address (one subscriber's network
// usually holds a whole /64, so counting single IPv6 addresses would let one
// host take a fresh limit per address).
func ipKey(remote string) string {
	h, _, err := net.SplitHostPort(remote)
	if err != nil {
		h = remote
	}
	ip, err := netip.ParseAddr(h)
	if err != nil {
		return h
	}
	ip = ip.Unmap()
	if ip.Is4() {
		return ip.String()
	}
	p, _ := ip.Prefix(64)
	return p.String()
}

// maxLogName is how much of a client-chosen name (username, client ID) a log
// line quotes.
const maxLogName = 64

// logName returns a client-chosen name fit for a log line: at most
// maxLogName bytes, quoted, with a mark when it was cut.
func logName(name []byte) string {
	if len(name) > maxLogName {
		return strconv.Quote(string(name[:maxLogName])) + "…(" + strconv.Itoa(len(name)) + " bytes)"
	}
	return strconv.Quote(string(name))
}

// sessions counts each user's sessions (connected or persistent) known to
// the registry, and their connected devices, and tells the Router when a
// user's count of either leaves or reaches zero.
type sessions struct {
	mu    sync.Mutex     // guards n and up, and orders the calls of watch
	n     map[string]int // one entry per user with a session
	up    map[string]int // one entry per user with a connected device
	watch func(user string, what Interest, on bool)
}

// tryAdd counts one more session of user unless that would exceed max. The
// check and the count are one step, so simultaneous CONNECTs cannot both
// take the last place.
func (s *sessions) tryAdd(user string, max int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.n[user] >= max {
		return false
	}
	s.add(s.n, user, Sessions, 1)
	return true
}

func (s *sessions) remove(user string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.add(s.n, user, Sessions, -1)
}

// connected counts a device of user that connected (delta 1) or
// disconnected (-1).
func (s *sessions) connected(user string, delta int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.add(s.up, user, Connected, delta)
}

// add adds delta to m[user], calling watch when the count leaves or reaches
// zero. s.mu is held.
func (s *sessions) add(m map[string]int, user string, what Interest, delta int) {
	was := m[user]
	if m[user] += delta; m[user] <= 0 {
		delete(m, user)
	}
	if on := m[user] > 0; on != (was > 0) && s.watch != nil {
		s.watch(user, what, on)
	}
}

// count returns user's sessions on this node.
func (s *sessions) count(user string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n[user]
}

// limitedLog writes the log lines of refusals (CONNECTs, requests) at a
// bounded rate, so that a flood of bad requests cannot flood the log: at
// most 10 lines a second with bursts of 50; a line written after some were
// dropped says how many ("suppressed").
type limitedLog struct {
	log     *slog.Logger
	lim     *rate.Limiter
	dropped atomic.Int64 // lines dropped since the last one written
}

func newLimitedLog(log *slog.Logger) *limitedLog {
	return &limitedLog{log: log, lim: rate.NewLimiter(10, 50)}
}

func (l *limitedLog) info(msg string, args ...any) {
	if !l.lim.Allow() {
		l.dropped.Add(1)
		return
	}
	if n := l.dropped.Swap(0); n > 0 {
		args = append(args, "suppressed", n)
	}
	l.log.Info(msg, args...)
}
