package bridge

import (
	"hash/fnv"
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
	// held is the payload bytes of the QoS 1 deliveries mochi holds for the
	// session (in flight to a connected device, or queued for a disconnected
	// one), at most Config.MaxSessionBytes plus one message: a delivery that
	// would exceed it is skipped and counted, and the device fills the gap by
	// sync. held is the sum of heldBy; both carry over when the session is
	// resumed.
	held   atomic.Int64
	heldMu sync.Mutex       // guards heldBy
	heldBy map[uint16]int64 // payload bytes by packet id of what mochi holds in flight
	// established is set once mochi wrote the session's CONNACK and resent
	// what it held (OnSessionEstablished); until then stored-message
	// deliveries are held back (see heldBack).
	established atomic.Bool
	// counted is set while the device counts among its user's connected
	// devices (sessions.up): from OnSessionEstablished to its disconnection.
	counted atomic.Bool
	// subscribing is true while mochi handles a SUBSCRIBE of this device:
	// OnACLCheck then checks filters, not deliveries.
	subscribing atomic.Bool
	// subackID is the packet id of a SUBSCRIBE or UNSUBSCRIBE being answered,
	// plus one, while the bridge has renumbered it (see OnSubscribe); 0
	// otherwise. Only the client's read loop writes it.
	subackID atomic.Uint32
}

// register records the device of an accepted CONNECT. A CONNECT that resumes
// or takes over a session keeps that session's place and counts; a new
// session takes a place among the user's MaxDevicesPerUser, counted on all
// nodes, or register returns false. clean is the CONNECT's clean start:
// mochi then discards what the old session held. The other nodes are told,
// and end their session with this client ID.
func (b *Bridge) register(cl *mqtt.Client, user string, clean bool) bool {
	d := &device{client: cl}
	d.lastActive.Store(time.Now().UnixNano())
	others := -1 // sessions on other nodes, once asked
	for {
		prev, resumes := b.devices.Load(cl.ID)
		if resumes {
			if !clean {
				d.takeHeld(prev.(*device))
			}
			if b.devices.CompareAndSwap(cl.ID, prev, d) {
				b.disconnectedDevice(user, prev.(*device))
				b.router.Takeover(user, cl.ID)
				return true
			}
			continue
		}
		if others < 0 {
			others = b.otherSessions(user, cl.ID)
		}
		if !b.sessions.tryAdd(user, b.cfg.MaxDevicesPerUser-others) {
			return false
		}
		if _, raced := b.devices.LoadOrStore(cl.ID, d); !raced {
			b.router.Takeover(user, cl.ID)
			return true
		}
		b.sessions.remove(user) // a simultaneous CONNECT with this client ID won: resume it
	}
}

// takeHeld moves what prev held in flight to d, which replaces it.
func (d *device) takeHeld(prev *device) {
	prev.heldMu.Lock()
	d.heldBy, prev.heldBy = prev.heldBy, nil
	d.held.Store(prev.held.Swap(0))
	prev.heldMu.Unlock()
}

// hold records n payload bytes held in flight under packet id.
func (d *device) hold(id uint16, n int64) {
	d.heldMu.Lock()
	defer d.heldMu.Unlock()
	if d.heldBy == nil {
		d.heldBy = make(map[uint16]int64)
	}
	d.held.Add(n - d.heldBy[id])
	d.heldBy[id] = n
}

// release forgets what was held under packet id.
func (d *device) release(id uint16) {
	d.heldMu.Lock()
	defer d.heldMu.Unlock()
	d.held.Add(-d.heldBy[id])
	delete(d.heldBy, id)
}

// reconcile forgets the packet ids that mochi no longer holds for cl: mochi
// rolls back a delivery dropped on a full write queue without a hook that
// names its packet id.
func (d *device) reconcile(cl *mqtt.Client) {
	d.heldMu.Lock()
	defer d.heldMu.Unlock()
	for id, n := range d.heldBy {
		if _, ok := cl.State.Inflight.Get(id); !ok {
			d.held.Add(-n)
			delete(d.heldBy, id)
		}
	}
}

// deviceOf returns the device entry of cl, nil if it has none.
func (b *Bridge) deviceOf(cl *mqtt.Client) *device {
	if d, ok := b.devices.Load(cl.ID); ok {
		return d.(*device)
	}
	return nil
}

// OnQosPublish counts a QoS 1 delivery mochi now holds for the session.
//
// A delivery that mochi put into a client that a new connection is taking
// over (runFanout found the old client just before the takeover, and its
// queue is copied or cleared) is taken out of it and held back for the new
// session instead, so that it is neither lost nor sent before the CONNACK.
func (b *Bridge) OnQosPublish(cl *mqtt.Client, pk packets.Packet, sent int64, resends int) {
	d := b.deviceOf(cl)
	if d == nil || pk.FixedHeader.Type != packets.Publish {
		return
	}
	if d.client != cl {
		cl.State.Inflight.Delete(pk.PacketID)
		if !b.holdBack(cl.ID, pk.Payload) {
			b.stats.budgetDrops.Add(1)
		}
		return
	}
	d.hold(pk.PacketID, int64(len(pk.Payload)))
}

// OnQosComplete forgets a delivery the device acknowledged.
func (b *Bridge) OnQosComplete(cl *mqtt.Client, pk packets.Packet) {
	if d := b.deviceOf(cl); d != nil {
		d.release(pk.PacketID)
	}
}

// OnQosDropped forgets a delivery mochi gave up.
func (b *Bridge) OnQosDropped(cl *mqtt.Client, pk packets.Packet) {
	if d := b.deviceOf(cl); d != nil {
		d.release(pk.PacketID)
	}
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
			b.disconnectedDevice(userOf(cl), d.(*device))
			b.sessions.remove(userOf(cl))
		}
	}
}

func (b *Bridge) lastActive(clientID string) int64 {
	if d, ok := b.devices.Load(clientID); ok {
		return d.(*device).lastActive.Load()
	}
	return 0
}

// connected reports whether clientID has a live connection now, whose
// CONNACK was written.
func (b *Bridge) connected(clientID string) bool {
	cl, ok := b.srv.Clients.Get(clientID)
	if !ok || cl.Closed() {
		return false
	}
	d := b.deviceOf(cl)
	return d != nil && d.client == cl && d.established.Load()
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

// routeOnline publishes the encoded online-only message id to user's devices
// on this node and reports where it went. mochi calls OnSelectSubscribers
// and OnPublishDropped synchronously within the publish, so the route is
// complete when publish returns.
func (b *Bridge) routeOnline(user, id string, payload []byte) (onlineRoute, error) {
	r := &onlineRoute{}
	b.pendingMu.Lock()
	b.pending[id] = r
	b.pendingMu.Unlock()
	err := b.publish(protocol.OnlineTopic(user), payload, 0, packets.Properties{})
	b.pendingMu.Lock()
	delete(b.pending, id)
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

	// keys serialises the sends of one key (by hash), so that two sends with
	// the same (sender, id) at once are routed once: see once.
	keys [64]sync.Mutex

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

// once returns the receipt remembered for key, with dup true, or else runs
// route and remembers its receipt. Sends of the same key wait for each other.
func (c *retryCache) once(key string, route func() protocol.Receipt) (r protocol.Receipt, dup bool) {
	h := fnv.New32a()
	h.Write([]byte(key))
	mu := &c.keys[h.Sum32()%uint32(len(c.keys))]
	mu.Lock()
	defer mu.Unlock()
	if r, ok := c.get(key); ok {
		return r, true
	}
	r = route()
	c.put(key, r)
	return r, false
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

// HasSession reports whether this node holds a session, connected or
// persistent, with the full client ID clientID ("user/id").
func (b *Bridge) HasSession(clientID string) bool {
	_, ok := b.devices.Load(clientID)
	return ok
}
