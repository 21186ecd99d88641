package bridge

import (
	"strings"
	"sync"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/imbridge/imbridge/protocol"
	"github.com/imbridge/imbridge/storage"
)

// maxFanoutQueue bounds the committed messages waiting for their delivery
// (each holds its encoded JSON, at most MaxPayload plus a few hundred bytes).
// The history writer never waits for the fan-out: a commit that finds the
// queue full is not delivered live, and is counted (FanoutDrops); the
// devices see the hole in inboxSeq and fill it by sync.
const maxFanoutQueue = 65536

// fanoutQueue hands committed batches from the history writer, and stored
// messages from other nodes, to runFanout without ever blocking either.
type fanoutQueue struct {
	mu      sync.Mutex // guards the fields below
	batches []fanoutBatch
	n       int // messages in batches, at most maxFanoutQueue
	closed  bool
	wake    chan struct{} // 1-buffered: something was queued, or the queue closed
}

// fanoutBatch is a commit of this node's history writer (appended), or one
// stored message that another node committed, for one user (remote).
type fanoutBatch struct {
	appended []storage.Appended
	remote   remoteStored
}

type remoteStored struct {
	user    string
	payload []byte // encoded with user's inboxSeq
}

// queueFanout is the history's OnCommit: it queues a batch for delivery, or
// drops it when the queue is full.
func (b *Bridge) queueFanout(batch []storage.Appended) {
	b.fanout.put(b, fanoutBatch{appended: batch}, len(batch))
}

// put queues a batch of n messages, or drops and counts it when the queue is
// full.
func (q *fanoutQueue) put(b *Bridge, batch fanoutBatch, n int) {
	q.mu.Lock()
	full := q.n+n > maxFanoutQueue
	if !full && !q.closed {
		q.batches = append(q.batches, batch)
		q.n += n
	}
	q.mu.Unlock()
	if full {
		b.stats.fanoutDrops.Add(int64(n))
		b.logs.info("live delivery skipped: fan-out queue full; devices will sync", "messages", n)
		return
	}
	q.poke()
}

func (q *fanoutQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	q.poke()
}

// poke wakes runFanout without queueing anything.
func (q *fanoutQueue) poke() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// take returns everything queued, and whether the queue is closed.
func (q *fanoutQueue) take() ([]fanoutBatch, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := q.batches
	q.batches, q.n = nil, 0
	return out, q.closed
}

// runFanout delivers committed messages to both users' inboxes, in commit
// order, here and (through the Router) on the other nodes that hold
// sessions of those users, and delivers here what other nodes committed,
// until Close. Between batches it delivers what was held back for sessions
// being (re)connected.
func (b *Bridge) runFanout() {
	defer close(b.fanoutDone)
	for range b.fanout.wake {
		for {
			b.redeliver()
			batches, closed := b.fanout.take()
			for _, batch := range batches {
				if r := batch.remote; r.user != "" {
					b.deliverStored(r.user, "", r.payload)
				}
				for _, a := range batch.appended {
					m := &a.Message
					to := protocol.WithUint(a.Encoded, "inboxSeq", a.ToInboxSeq)
					b.deliverStored(m.To, m.ID, to)
					b.router.Stored(m.To, to)
					if m.From != m.To {
						from := protocol.WithUint(a.Encoded, "inboxSeq", a.FromInboxSeq)
						b.deliverStored(m.From, m.ID, from)
						b.router.Stored(m.From, from)
					}
				}
			}
			if len(batches) == 0 {
				if closed {
					return
				}
				break
			}
		}
	}
}

// deliverStored publishes an encoded stored message at QoS 1 to user's inbox.
// Only runFanout calls it.
func (b *Bridge) deliverStored(user, id string, payload []byte) {
	b.fanoutSize.Store(int64(len(payload)))
	b.delivery = delivery{payload: payload}
	if err := b.publish(protocol.InboxTopic(user), payload, 1, packets.Properties{}); err != nil {
		b.log.Error("deliver stored message", "error", err, "id", id, "user", user)
	}
	b.delivery = delivery{}
}

// delivery is the stored message runFanout is publishing, for OnACLCheck,
// which mochi calls on runFanout's goroutine for each subscriber.
type delivery struct {
	payload []byte
	only    string // with redeliver: the one client ID the message is for
}

// Deliveries held back. mochi v2.7.9 adds a resuming client to its client
// map before it writes the CONNACK, and until then a delivery to the old,
// taken-over client is lost with it (its queue is copied before, and cleared
// after), while one to the new client may be written before the CONNACK,
// which MQTT forbids [MQTT-3.2.0-1]. OnACLCheck therefore holds back a
// stored-message delivery to a session that is not established (CONNACK
// written, queued messages resent), and runFanout delivers it once it is,
// in order, before anything newer for that session.
type heldBack struct {
	payloads [][]byte  // in commit order
	bytes    int64     // their size, at most Config.MaxSessionBytes
	since    time.Time // when the first was held back
}

// maxHoldBack is how long deliveries wait for their session to be
// established; a CONNECT that never completes costs no more than that, and
// its device syncs.
const maxHoldBack = 10 * time.Second

// holdBack keeps payload, a delivery, for the session clientID, and
// reports false when the session already holds its budget back.
func (b *Bridge) holdBack(clientID string, payload []byte) bool {
	b.waitingMu.Lock()
	defer b.waitingMu.Unlock()
	h := b.waiting[clientID]
	if h == nil {
		h = &heldBack{since: time.Now()}
		b.waiting[clientID] = h
	}
	if h.bytes+int64(len(payload)) > b.cfg.MaxSessionBytes {
		return false
	}
	h.payloads = append(h.payloads, payload)
	h.bytes += int64(len(payload))
	b.stats.heldBack.Add(1)
	return true
}

// waitsFor reports whether deliveries wait for the session clientID.
func (b *Bridge) waitsFor(clientID string) bool {
	b.waitingMu.Lock()
	defer b.waitingMu.Unlock()
	return b.waiting[clientID] != nil
}

// takeReady removes and returns what waits for sessions now established,
// and counts as dropped what waited longer than maxHoldBack or whose
// session is gone.
func (b *Bridge) takeReady() map[string]*heldBack {
	b.waitingMu.Lock()
	defer b.waitingMu.Unlock()
	var ready map[string]*heldBack
	for id, h := range b.waiting {
		d, _ := b.devices.Load(id)
		ok := d != nil && d.(*device).established.Load()
		if !ok && d != nil && time.Since(h.since) < maxHoldBack {
			continue
		}
		delete(b.waiting, id)
		if !ok {
			b.stats.budgetDrops.Add(int64(len(h.payloads)))
			continue
		}
		if ready == nil {
			ready = make(map[string]*heldBack)
		}
		ready[id] = h
	}
	return ready
}

// redeliver delivers what was held back for sessions now established, each
// to that one session, and drops (and counts) what waited longer than
// maxHoldBack or whose session is gone: those devices sync.
func (b *Bridge) redeliver() {
	for id, h := range b.takeReady() {
		user, _, _ := strings.Cut(id, "/")
		for _, p := range h.payloads {
			b.fanoutSize.Store(int64(len(p)))
			b.delivery = delivery{payload: p, only: id}
			if err := b.publish(protocol.InboxTopic(user), p, 1, packets.Properties{}); err != nil {
				b.log.Error("deliver held-back message", "error", err, "client", id)
			}
		}
		b.delivery = delivery{}
	}
}
