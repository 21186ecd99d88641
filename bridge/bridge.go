package bridge

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/imbridge/imbridge/auth"
	"github.com/imbridge/imbridge/protocol"
	"github.com/imbridge/imbridge/storage"
)

// Bridge is the messaging rules of imbridge, attached to one mochi server as
// a hook. Create it with Open.
type Bridge struct {
	mqtt.HookBase
	cfg      Config
	log      *slog.Logger
	srv      *mqtt.Server
	inline   *mqtt.Client
	store    *storage.Store
	verifier *auth.Verifier

	devices  sync.Map // client ID -> *device, for every session the bridge knows
	sessions sessions // per user, the entries of devices

	connectIP, connectUser, sends *buckets // nil: no limit

	pendingMu sync.Mutex              // guards pending
	pending   map[string]*onlineRoute // online-only sends being published, by message id

	onlineSeen *retryCache // ids of recent online-only sends

	fanout     chan []storage.Appended // committed appends, in commit order
	fanoutDone chan struct{}

	stopPrune chan struct{} // closed by Close; nil without retention
	pruneDone chan struct{}

	stats      counters
	rejectedBy sync.Map // protocol.ErrorCode -> *atomic.Int64: requests refused, by reason
}

// counters are the bridge's statistics; see Stats.
type counters struct {
	stored, duplicates, delivered, offline, onlineDropped, storeErrors atomic.Int64
	queueDrops, authFailures, shed, connectsLimited, pruned            atomic.Int64
}

// Stats are counts since Open.
type Stats struct {
	Stored          int64 `json:"stored"`          // normal messages stored
	Duplicates      int64 `json:"duplicates"`      // retries answered from an earlier send
	Delivered       int64 `json:"delivered"`       // online-only messages handed to a device
	Offline         int64 `json:"offline"`         // online-only messages dropped: receiver offline
	OnlineDropped   int64 `json:"onlineDropped"`   // online-only messages dropped: device queue full
	Rejected        int64 `json:"rejected"`        // requests refused for their content
	StoreErrors     int64 `json:"storeErrors"`     // sends or queries the store failed
	QueueDrops      int64 `json:"queueDrops"`      // deliveries mochi dropped on a full device write queue
	AuthFailures    int64 `json:"authFailures"`    // refused CONNECTs and HTTP requests
	Shed            int64 `json:"shed"`            // sends refused by the per-user send rate
	ConnectsLimited int64 `json:"connectsLimited"` // CONNECTs refused by rate or device limits
	Pruned          int64 `json:"pruned"`          // messages removed by the retention
}

// Open opens the history at cfg.DBPath and attaches a new Bridge to srv as a
// hook. srv must be created with Options.InlineClient = true and not yet
// serving. Open returns storage.ErrLocked when another process holds the file.
func Open(srv *mqtt.Server, cfg Config) (*Bridge, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	inline, ok := srv.Clients.Get(mqtt.InlineClientId)
	if !srv.Options.InlineClient || !ok {
		return nil, ErrNoInlineClient
	}
	verifier, err := auth.NewVerifier(cfg.Secret)
	if err != nil {
		return nil, err
	}
	b := &Bridge{
		cfg:         cfg,
		log:         cfg.Logger,
		srv:         srv,
		inline:      inline,
		verifier:    verifier,
		pending:     make(map[string]*onlineRoute),
		onlineSeen:  newRetryCache(cfg.OnlineRetryWindow, 100_000),
		sessions:    sessions{n: map[string]int{}},
		connectIP:   newBuckets(cfg.ConnectRatePerIP, cfg.ConnectBurstPerIP),
		connectUser: newBuckets(cfg.ConnectRatePerUser, cfg.ConnectBurstUser),
		sends:       newBuckets(cfg.SendRate, cfg.SendBurst),
		fanout:      make(chan []storage.Appended, 256),
		fanoutDone:  make(chan struct{}),
	}
	b.store, err = storage.Open(cfg.DBPath, &storage.Options{
		LockTimeout: cfg.LockTimeout,
		OnCommit:    func(a []storage.Appended) { b.fanout <- a },
		Observe:     cfg.Observer.Commit,
		Logger:      cfg.Logger,
	})
	if err != nil {
		return nil, err
	}
	if err := srv.AddHook(b, nil); err != nil {
		b.store.Close()
		return nil, err
	}
	go b.runFanout()
	if cfg.Retention != (storage.Retention{}) {
		b.stopPrune, b.pruneDone = make(chan struct{}), make(chan struct{})
		go b.runPrune()
	}
	return b, nil
}

// runPrune applies the retention every PruneInterval until Close, which
// also stops a pass under way.
func (b *Bridge) runPrune() {
	defer close(b.pruneDone)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-b.stopPrune:
			cancel()
		case <-ctx.Done():
		}
	}()
	tick := time.NewTicker(b.cfg.PruneInterval)
	defer tick.Stop()
	for {
		select {
		case <-b.stopPrune:
			return
		case now := <-tick.C:
			n, err := b.store.Prune(ctx, b.cfg.Retention, now)
			b.stats.pruned.Add(int64(n))
			if err != nil && ctx.Err() == nil {
				b.log.Error("pruning the history", "error", err)
			} else if n > 0 {
				b.log.Debug("history pruned", "messages", n)
			}
		}
	}
}

// Close commits the sends already queued, delivers them, and closes the
// history file. Call it after the mochi server has stopped; it blocks until
// done. Later calls return nil.
func (b *Bridge) Close() error {
	if b.stopPrune != nil {
		select {
		case <-b.stopPrune:
		default:
			close(b.stopPrune)
		}
		<-b.pruneDone
	}
	err := b.store.Close()
	select {
	case <-b.fanoutDone:
		return err
	default:
	}
	close(b.fanout)
	<-b.fanoutDone
	return err
}

// Epoch returns the identity of the history file (see storage.Store.Epoch).
func (b *Bridge) Epoch() string { return b.store.Epoch() }

// Stats returns the bridge's counters.
func (b *Bridge) Stats() Stats {
	c := &b.stats
	return Stats{
		Stored: c.stored.Load(), Duplicates: c.duplicates.Load(), Delivered: c.delivered.Load(),
		Offline: c.offline.Load(), OnlineDropped: c.onlineDropped.Load(), Rejected: b.rejectedTotal(),
		StoreErrors: c.storeErrors.Load(), QueueDrops: c.queueDrops.Load(), AuthFailures: c.authFailures.Load(),
		Shed: c.shed.Load(), ConnectsLimited: c.connectsLimited.Load(), Pruned: c.pruned.Load(),
	}
}

// Rejected returns how many requests were refused, by error code.
func (b *Bridge) Rejected() map[protocol.ErrorCode]int64 {
	out := map[protocol.ErrorCode]int64{}
	b.rejectedBy.Range(func(k, v any) bool {
		out[k.(protocol.ErrorCode)] = v.(*atomic.Int64).Load()
		return true
	})
	return out
}

// rejectedTotal sums the refusals of all codes.
func (b *Bridge) rejectedTotal() (n int64) {
	for _, v := range b.Rejected() {
		n += v
	}
	return n
}

// reject counts a request refused with code.
func (b *Bridge) reject(code protocol.ErrorCode) {
	v, ok := b.rejectedBy.Load(code)
	if !ok {
		v, _ = b.rejectedBy.LoadOrStore(code, new(atomic.Int64))
	}
	v.(*atomic.Int64).Add(1)
}

// StoreStats returns the history writer's counters.
func (b *Bridge) StoreStats() storage.Stats { return b.store.Stats() }

// ID returns "imbridge".
func (b *Bridge) ID() string { return "imbridge" }

// Provides reports the mochi hook events the bridge handles.
func (b *Bridge) Provides(event byte) bool {
	return bytes.Contains([]byte{
		mqtt.OnConnect, mqtt.OnConnectAuthenticate, mqtt.OnACLCheck,
		mqtt.OnSessionEstablished, mqtt.OnDisconnect, mqtt.OnClientExpired,
		mqtt.OnSubscribe, mqtt.OnPublish, mqtt.OnSelectSubscribers, mqtt.OnPublishDropped,
		mqtt.OnPacketEncode, mqtt.OnPacketRead,
	}, []byte{event})
}

// OnPacketEncode gives an MQTT 5 PUBACK of reason 0x10 (receiver offline) a
// reason string: mochi writes a success-class reason code only when the
// PUBACK has properties, and would otherwise send plain success.
func (b *Bridge) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if pk.FixedHeader.Type == packets.Puback && pk.ReasonCode == codeNoSubscribers.Code {
		pk.Properties.ReasonString = codeNoSubscribers.Reason
	}
	return pk
}

// OnConnect authenticates a CONNECT: the username must be a user ID and the
// password a valid user token for it. A refused client gets CONNACK "not
// authorized" and no session. An accepted one has its client ID moved into
// its user's namespace and its will discarded.
func (b *Bridge) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	user := string(pk.Connect.Username)
	if !b.connectIP.allow(hostOf(cl.Net.Remote)) || !b.connectUser.allow(user) {
		return b.refuseLimited(cl, "connection rate limit", user)
	}
	reason := ""
	if !pk.Connect.UsernameFlag || !protocol.ValidUserID(user) {
		reason = "username is not a user ID"
	} else if c, err := b.verifier.Verify(string(pk.Connect.Password)); err != nil {
		reason = err.Error()
	} else if c.Admin || c.Subject != user {
		reason = "token is not for this user"
	}
	if reason != "" {
		b.stats.authFailures.Add(1)
		b.log.Info("connection refused", "remote", cl.Net.Remote, "username", user, "reason", reason)
		code := packets.ErrNotAuthorized // 0x87
		if cl.Properties.ProtocolVersion < 5 {
			code = packets.ErrBadUsernameOrPassword // mochi sends MQTT 3.1.1 return code 5, not authorized
		}
		_ = b.srv.SendConnack(cl, code, false, nil)
		return code
	}
	cl.ID = user + "/" + cl.ID
	cl.Properties.Will = mqtt.Will{}
	if _, resumes := b.devices.Load(cl.ID); !resumes && b.sessions.count(user) >= b.cfg.MaxDevicesPerUser {
		return b.refuseLimited(cl, "device limit", user)
	}
	return nil
}

// refuseLimited refuses a CONNECT over a limit: MQTT 5 CONNACK 0x97 (quota
// exceeded) or 0x9F (connection rate exceeded), MQTT 3.1.1 return code 3
// (server unavailable).
func (b *Bridge) refuseLimited(cl *mqtt.Client, why, user string) error {
	b.stats.connectsLimited.Add(1)
	b.log.Info("connection refused", "remote", cl.Net.Remote, "username", user, "reason", why)
	code := packets.ErrQuotaExceeded
	if why == "connection rate limit" {
		code = packets.ErrConnectionRateExceeded
	}
	if cl.Properties.ProtocolVersion < 5 {
		code = packets.ErrServerUnavailable
	}
	_ = b.srv.SendConnack(cl, code, false, nil)
	return code
}

// OnConnectAuthenticate accepts every client that OnConnect let through.
func (b *Bridge) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	return userOf(cl) != ""
}

// OnSessionEstablished registers the device and logs the connection.
func (b *Bridge) OnSessionEstablished(cl *mqtt.Client, pk packets.Packet) {
	d := &device{client: cl}
	d.lastActive.Store(time.Now().UnixNano())
	if _, resumed := b.devices.Swap(cl.ID, d); !resumed {
		b.sessions.add(userOf(cl), 1)
	}
	b.log.Info("device connected", "client", cl.ID, "remote", cl.Net.Remote, "listener", cl.Net.Listener,
		"protocol", cl.Properties.ProtocolVersion, "clean", pk.Connect.Clean)
}

// OnDisconnect logs the disconnection and forgets a device whose session ends
// with it.
func (b *Bridge) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	if cl.Net.Inline {
		return
	}
	b.log.Info("device disconnected", "client", cl.ID, "remote", cl.Net.Remote, "error", err, "session_ends", expire)
	if expire && !cl.IsTakenOver() {
		b.forget(cl)
	}
}

// OnClientExpired forgets an expired persistent session and removes its
// subscriptions, which mochi leaves in its topic index.
func (b *Bridge) OnClientExpired(cl *mqtt.Client) {
	b.srv.UnsubscribeClient(cl)
	b.forget(cl)
}

// OnPublishDropped counts deliveries mochi dropped because a device's write
// queue was full, and marks an online-only send as not delivered.
func (b *Bridge) OnPublishDropped(cl *mqtt.Client, pk packets.Packet) {
	b.stats.queueDrops.Add(1)
	b.log.Debug("delivery dropped: device write queue full", "client", cl.ID, "topic", pk.TopicName)
	if _, kind := protocol.ParseTopic(pk.TopicName); kind == protocol.TopicOnline {
		b.markRoute(pk.Payload, func(r *onlineRoute) { r.dropped = true })
	}
}

// userOf returns the user of an authenticated client, "" for the inline
// client and clients not yet authenticated.
func userOf(cl *mqtt.Client) string {
	if cl.Net.Inline {
		return ""
	}
	user, _, ok := strings.Cut(cl.ID, "/")
	if !ok {
		return ""
	}
	return user
}

// publish injects a server message through mochi's inline client.
func (b *Bridge) publish(topic string, payload []byte, qos byte, props packets.Properties) error {
	var id uint16
	if qos > 0 {
		id = 1 // mochi requires a packet id for QoS > 0; the inline client never acks
	}
	return b.srv.InjectPacket(b.inline, packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos},
		TopicName:   topic,
		Payload:     payload,
		Properties:  props,
		PacketID:    id,
	})
}

// runFanout delivers committed messages to both users' inboxes, in commit
// order, until Close.
func (b *Bridge) runFanout() {
	defer close(b.fanoutDone)
	for batch := range b.fanout {
		for _, a := range batch {
			m := &a.Message
			b.deliverStored(m.To, m.ID, protocol.WithUint(a.Encoded, "inboxSeq", a.ToInboxSeq))
			if m.From != m.To {
				b.deliverStored(m.From, m.ID, protocol.WithUint(a.Encoded, "inboxSeq", a.FromInboxSeq))
			}
		}
	}
}

// deliverStored publishes an encoded stored message at QoS 1 to user's inbox.
func (b *Bridge) deliverStored(user, id string, payload []byte) {
	if err := b.publish(protocol.InboxTopic(user), payload, 1, packets.Properties{}); err != nil {
		b.log.Error("deliver stored message", "error", err, "id", id, "user", user)
	}
}
