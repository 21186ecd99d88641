package bridge

import (
	"net"
	"sync"
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

	mu    sync.Mutex // guards m and swept
	m     map[string]*bucket
	swept time.Time
}

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
	if now.Sub(b.swept) > time.Minute {
		for k, e := range b.m {
			if now.Sub(e.used) > time.Minute && e.lim.TokensAt(now) >= float64(b.burst) {
				delete(b.m, k)
			}
		}
		b.swept = now
	}
	e := b.m[key]
	if e == nil {
		e = &bucket{lim: rate.NewLimiter(b.rate, b.burst)}
		b.m[key] = e
	}
	e.used = now
	return e.lim
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

// hostOf returns the IP of a remote address.
func hostOf(remote string) string {
	if h, _, err := net.SplitHostPort(remote); err == nil {
		return h
	}
	return remote
}

// sessions counts each user's sessions (connected or persistent) known to
// the registry.
type sessions struct {
	mu sync.Mutex // guards n
	n  map[string]int
}

func (s *sessions) add(user string, d int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.n[user] += d; s.n[user] <= 0 {
		delete(s.n, user)
	}
}

func (s *sessions) count(user string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n[user]
}
