package bridge

import (
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/imbridge/imbridge/protocol"
)

// device is what the bridge knows of one session.
type device struct {
	client     *mqtt.Client // the client that opened the session; compared on forget
	lastActive atomic.Int64 // Unix ns of the last connect, subscribe or publish
}

// touch records activity of the device with this client ID.
func (b *Bridge) touch(clientID string) {
	if d, ok := b.devices.Load(clientID); ok {
		d.(*device).lastActive.Store(time.Now().UnixNano())
	}
}

// forget drops the device entry of cl, unless a newer connection with the same
// client ID has replaced it.
func (b *Bridge) forget(cl *mqtt.Client) {
	if d, ok := b.devices.Load(cl.ID); ok && d.(*device).client == cl {
		if b.devices.CompareAndDelete(cl.ID, d) {
			b.sessions.add(userOf(cl), -1)
		}
	}
}

func (b *Bridge) lastActive(clientID string) int64 {
	if d, ok := b.devices.Load(clientID); ok {
		return d.(*device).lastActive.Load()
	}
	return 0
}

// connected reports whether clientID has a live connection now.
func (b *Bridge) connected(clientID string) bool {
	cl, ok := b.srv.Clients.Get(clientID)
	return ok && !cl.Closed()
}

// OnSelectSubscribers picks, for every shared subscription group, the
// connected member that was most recently active (ties broken by client ID).
// A group with no connected member gets nothing: mochi's own pick might
// choose a disconnected persistent session, which would queue the message.
func (b *Bridge) OnSelectSubscribers(subs *mqtt.Subscribers, pk packets.Packet) *mqtt.Subscribers {
	picked := false
	for filter, group := range subs.Shared {
		best, bestAt := "", int64(-1)
		for id := range group {
			if !b.connected(id) {
				continue
			}
			if at := b.lastActive(id); at > bestAt || at == bestAt && id < best {
				best, bestAt = id, at
			}
		}
		if best == "" {
			delete(subs.Shared, filter)
			continue
		}
		sub := group[best]
		if prev, ok := subs.SharedSelected[best]; ok {
			sub = prev.Merge(sub)
		}
		subs.SharedSelected[best] = sub
		picked = true
	}
	if _, kind := protocol.ParseTopic(pk.TopicName); kind == protocol.TopicOnline && picked {
		b.markRoute(pk.Payload, func(r *onlineRoute) { r.picked = true })
	}
	return subs
}

// onlineRoute is what happened to one online-only message while it was
// published: whether a device was picked, and whether mochi then dropped it.
type onlineRoute struct {
	picked, dropped bool
}

// markRoute applies f to the route of the online-only message encoded in
// payload, if one is being published.
func (b *Bridge) markRoute(payload []byte, f func(*onlineRoute)) {
	id, ok := protocol.PeekMessageID(payload)
	if !ok {
		return
	}
	b.pendingMu.Lock()
	if r := b.pending[string(id)]; r != nil {
		f(r)
	}
	b.pendingMu.Unlock()
}

// routeOnline publishes an online-only message and reports where it went.
// mochi calls OnSelectSubscribers and OnPublishDropped synchronously within
// the publish, so the route is complete when publish returns.
func (b *Bridge) routeOnline(m *protocol.Message, payload []byte) (onlineRoute, error) {
	r := &onlineRoute{}
	b.pendingMu.Lock()
	b.pending[m.ID] = r
	b.pendingMu.Unlock()
	err := b.publish(protocol.OnlineTopic(m.To), payload, 0, packets.Properties{})
	b.pendingMu.Lock()
	delete(b.pending, m.ID)
	out := *r
	b.pendingMu.Unlock()
	return out, err
}

// retryCache remembers the receipts of recent online-only sends by (sender,
// id) for at least window, in two generations, holding at most max entries
// per generation.
type retryCache struct {
	window time.Duration
	max    int

	mu      sync.Mutex // guards the fields below
	rotated time.Time
	cur     map[string]protocol.Receipt
	prev    map[string]protocol.Receipt
}

func newRetryCache(window time.Duration, max int) *retryCache {
	return &retryCache{window: window, max: max, rotated: time.Now(),
		cur: map[string]protocol.Receipt{}, prev: map[string]protocol.Receipt{}}
}

func (c *retryCache) rotate(now time.Time) {
	if now.Sub(c.rotated) >= c.window || len(c.cur) >= c.max {
		c.prev, c.cur, c.rotated = c.cur, make(map[string]protocol.Receipt), now
	}
}

func (c *retryCache) get(key string) (protocol.Receipt, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.rotate(time.Now())
	if r, ok := c.cur[key]; ok {
		return r, true
	}
	r, ok := c.prev[key]
	return r, ok
}

func (c *retryCache) put(key string, r protocol.Receipt) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.rotate(time.Now())
	c.cur[key] = r
}
