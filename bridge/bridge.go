package bridge

import (
	"bytes"
	"context"
	"errors"
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
	store    storage.Store
	verifier *auth.Verifier
	router   Router // the other nodes; Alone on a single node

	devices  sync.Map // client ID -> *device, for every session the bridge knows
	sessions sessions // per user, the entries of devices

	connectIP, connectUser, sends *buckets // nil: no limit
	authFails                     *buckets // failed logins per IP (or IPv6 /64)
	queries                       *buckets // history and sync requests per user
	logs                          *limitedLog

	pendingMu sync.Mutex              // guards pending
	pending   map[string]*onlineRoute // online-only sends being published, by message id

	onlineSeen *retryCache // ids of recent online-only sends

	replyTurns [64]sync.Mutex // reply publishes to one topic (by hash) take turns; see reply
	askers     sync.Map       // reply topic -> client ID of the device its current publish is for

	fanout     fanoutQueue          // committed appends, in commit order
	fanoutSize atomic.Int64         // payload size of the stored message being delivered; see OnACLCheck
	fanoutDone chan struct{}        // closed when runFanout has delivered everything and returned
	delivery   delivery             // the stored message being delivered; owned by runFanout
	waitingMu  sync.Mutex           // guards waiting
	waiting    map[string]*heldBack // by client ID: deliveries waiting for their session
	closeOnce  sync.Once
	closeErr   error

	stopPrune chan struct{} // closed by Close; nil without retention
	pruneDone chan struct{}

	stats      counters
	rejectedBy sync.Map // protocol.ErrorCode -> *atomic.Int64: requests refused, by reason
}

// counters are the bridge's statistics; see Stats.
type counters struct {
	stored, duplicates, delivered, offline, onlineDropped, storeErrors atomic.Int64
	queueDrops, authFailures, shed, connectsLimited, pruned            atomic.Int64
	budgetDrops, fanoutDrops, queriesLimited, heldBack                 atomic.Int64
	unroutable                                                         atomic.Int64
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
	BudgetDrops     int64 `json:"budgetDrops"`     // deliveries skipped: the session held MaxSessionBytes
	FanoutDrops     int64 `json:"fanoutDrops"`     // deliveries skipped: the fan-out queue was full
	QueriesLimited  int64 `json:"queriesLimited"`  // history and sync requests refused by the per-user rate
	HeldBack        int64 `json:"heldBack"`        // deliveries held back until their session was established
	Unroutable      int64 `json:"unroutable"`      // online-only messages not delivered: the other nodes could not be asked
}

// Open opens the history (cfg.OpenStore, or the bbolt file at cfg.DBPath) and attaches a new Bridge to srv as a
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
	verifier, err := auth.NewVerifier(cfg.Secret, cfg.Tokens)
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
		sessions:    sessions{n: map[string]int{}, up: map[string]int{}},
		connectIP:   newBuckets(cfg.ConnectRatePerIP, cfg.ConnectBurstPerIP),
		connectUser: newBuckets(cfg.ConnectRatePerUser, cfg.ConnectBurstUser),
		sends:       newBuckets(cfg.SendRate, cfg.SendBurst),
		authFails:   newBuckets(cfg.LoginFailureRatePerIP, cfg.LoginFailureBurstPerIP),
		queries:     newBuckets(cfg.QueryRate, cfg.QueryBurst),
		logs:        newLimitedLog(cfg.Logger),
		fanout:      fanoutQueue{wake: make(chan struct{}, 1)},
		fanoutDone:  make(chan struct{}),
		waiting:     make(map[string]*heldBack),
		router:      cfg.Router,
	}
	b.sessions.watch = b.router.Watch
	b.store, err = cfg.OpenStore(&storage.Options{
		LockTimeout:  cfg.LockTimeout,
		MaxUserBytes: uint64(cfg.MaxUserBytes),
		OnCommit:     b.queueFanout,
		Observe:      cfg.Observer.Commit,
		Logger:       cfg.Logger,
	})
	if err != nil {
		return nil, err
	}
	if err := srv.AddHook(b, nil); err != nil {
		b.store.Close()
		return nil, err
	}
	if err := b.router.Start(peer{b}); err != nil {
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
// done. It is safe to call more than once and from several goroutines: every
// call waits for the first and returns its error.
func (b *Bridge) Close() error {
	b.closeOnce.Do(func() {
		if b.stopPrune != nil {
			close(b.stopPrune)
			<-b.pruneDone
		}
		rerr := b.router.Close() // nothing more from other nodes
		b.closeErr = errors.Join(b.store.Close(), rerr)
		b.fanout.close()
		<-b.fanoutDone
	})
	return b.closeErr
}

// Epoch returns the identity of the history (see storage.Store).
func (b *Bridge) Epoch() string { return b.store.Epoch() }

// Stats returns the bridge's counters.
func (b *Bridge) Stats() Stats {
	c := &b.stats
	return Stats{
		Stored: c.stored.Load(), Duplicates: c.duplicates.Load(), Delivered: c.delivered.Load(),
		Offline: c.offline.Load(), OnlineDropped: c.onlineDropped.Load(), Rejected: b.rejectedTotal(),
		StoreErrors: c.storeErrors.Load(), QueueDrops: c.queueDrops.Load(), AuthFailures: c.authFailures.Load(),
		Shed: c.shed.Load(), ConnectsLimited: c.connectsLimited.Load(), Pruned: c.pruned.Load(),
		BudgetDrops: c.budgetDrops.Load(), FanoutDrops: c.fanoutDrops.Load(), QueriesLimited: c.queriesLimited.Load(),
		HeldBack: c.heldBack.Load(), Unroutable: c.unroutable.Load(),
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
		mqtt.OnPacketEncode, mqtt.OnPacketRead, mqtt.OnSubscribed, mqtt.OnUnsubscribe,
		mqtt.OnQosPublish, mqtt.OnQosComplete, mqtt.OnQosDropped,
	}, []byte{event})
}

// OnPacketEncode gives an MQTT 5 PUBACK of reason 0x10 (receiver offline) a
// reason string: mochi writes a success-class reason code only when the
// PUBACK has properties, and would otherwise send plain success.
//
// It also puts a client's own packet id back on a SUBACK or UNSUBACK that
// OnSubscribe renumbered, and keeps mochi from writing a DISCONNECT to an
// MQTT 3.1.1 client, which that version does not allow from a server
// (mochi then just closes the connection): a packet over Mods.MaxSize is
// not written.
func (b *Bridge) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	switch pk.FixedHeader.Type {
	case packets.Puback:
		if pk.ReasonCode == codeNoSubscribers.Code {
			pk.Properties.ReasonString = codeNoSubscribers.Reason
		}
	case packets.Suback, packets.Unsuback:
		if pk.PacketID == 0 {
			if d := b.deviceOf(cl); d != nil {
				if id := d.subackID.Swap(0); id != 0 {
					pk.PacketID = uint16(id - 1)
				}
			}
		}
	case packets.Disconnect:
		if cl.Properties.ProtocolVersion < 5 {
			pk.Mods.MaxSize = 1
		}
	}
	return pk
}

// OnConnect authenticates a CONNECT: the username must be a user ID and the
// password a valid user token for it. A refused client gets CONNACK "not
// authorized" (MQTT 5: with the reason, such as "token expired") and no
// session. An accepted one has its client ID moved into its user's namespace,
// its will discarded, and its session counted against the user's device
// limit at once, so that simultaneous CONNECTs cannot exceed it.
//
// The order of the checks keeps anyone from locking a user out: the per-IP
// CONNECT rate first, then the IP's budget of failed logins, then the token,
// and only then the user's own CONNECT rate, which so only the holder of a
// valid token can spend. Usernames that are not user IDs create no state.
func (b *Bridge) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	ip := ipKey(cl.Net.Remote)
	if !b.connectIP.allow(ip) {
		return b.refuseLimited(cl, "connection rate limit", logName(pk.Connect.Username))
	}
	if b.authFails.exhausted(ip) {
		return b.refuseLimited(cl, "too many failed logins from this address", logName(pk.Connect.Username))
	}
	user := string(pk.Connect.Username)
	reason := ""
	if !pk.Connect.UsernameFlag || !protocol.ValidUserID(user) {
		reason = "username is not a user ID"
	} else if c, err := b.verifier.Verify(string(pk.Connect.Password)); err != nil {
		reason = auth.Reason(err)
	} else if c.Admin || c.Subject != user {
		reason = "token is not for this user"
	}
	if reason != "" {
		b.stats.authFailures.Add(1)
		b.authFails.allow(ip)
		b.logs.info("connection refused", "remote", cl.Net.Remote, "username", logName(pk.Connect.Username), "reason", reason)
		code := packets.Code{Code: packets.ErrNotAuthorized.Code, Reason: "not authorized: " + reason} // 0x87
		if cl.Properties.ProtocolVersion < 5 {
			code = packets.ErrBadUsernameOrPassword // mochi sends MQTT 3.1.1 return code 5, not authorized
		}
		_ = b.srv.SendConnack(cl, code, false, nil)
		return code
	}
	if !b.connectUser.allow(user) {
		return b.refuseLimited(cl, "connection rate limit", user)
	}
	cl.ID = user + "/" + cl.ID
	cl.Properties.Will = mqtt.Will{}
	if !b.register(cl, user, pk.Connect.Clean) {
		return b.refuseLimited(cl, "device limit", user)
	}
	return nil
}

// refuseLimited refuses a CONNECT over a limit: MQTT 5 CONNACK 0x97 (quota
// exceeded) or 0x9F (connection rate exceeded), MQTT 3.1.1 return code 3
// (server unavailable).
func (b *Bridge) refuseLimited(cl *mqtt.Client, why, user string) error {
	b.stats.connectsLimited.Add(1)
	b.logs.info("connection refused", "remote", cl.Net.Remote, "username", user, "reason", why)
	code := packets.Code{Code: packets.ErrQuotaExceeded.Code, Reason: why}
	if why != "device limit" {
		code.Code = packets.ErrConnectionRateExceeded.Code
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

// OnSessionEstablished logs the connection and counts the device as
// connected.
func (b *Bridge) OnSessionEstablished(cl *mqtt.Client, pk packets.Packet) {
	if d := b.deviceOf(cl); d != nil && d.client == cl {
		d.established.Store(true)
		b.connectedDevice(cl, d)
		b.fanout.poke() // deliveries held back for the CONNACK may go now
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
	if d := b.deviceOf(cl); d != nil && d.client == cl {
		b.disconnectedDevice(userOf(cl), d)
	}
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

// HeldBytes returns the payload bytes of the stored-message deliveries mochi
// holds for all sessions (in flight, or queued for disconnected devices);
// each session holds at most Config.MaxSessionBytes.
func (b *Bridge) HeldBytes() int64 {
	var n int64
	b.devices.Range(func(_, d any) bool {
		n += d.(*device).held.Load()
		return true
	})
	return n
}
