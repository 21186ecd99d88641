package client

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	pahopackets "github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/rs/xid"

	"github.com/imbridge/imbridge/protocol"
)

// Config configures a Client. Broker, User and Token (or TokenFunc) are
// required; zero fields take the defaults written beside them.
type Config struct {
	// Broker is the server's MQTT URL: tcp://host:1883, ws://host:8083/mqtt,
	// tls://host:8883 or wss://...
	Broker string
	// User is the user ID.
	User string
	// Token authenticates User (see docs/protocol.md). TokenFunc, if set, is
	// called instead at every connect and reconnect, so that tokens can be
	// refreshed.
	Token     string
	TokenFunc func() (string, error)
	// DeviceID is the MQTT client ID of this device; the server keeps it
	// apart from other users' IDs. Default: random per Dial. Set it for a
	// persistent session.
	DeviceID string
	// Persistent asks for a persistent session (MQTT clean session off):
	// the server keeps this device's subscriptions and missed stored
	// messages while it is away. Either way the client catches up from the
	// history after each connect.
	Persistent bool
	// InboxSeq and Epoch resume delivery after the last stored message the
	// app processed (Client.InboxSeq and Client.Epoch, saved by the app).
	// Zero means from the beginning of the user's history. If the server's
	// history has a different epoch, delivery starts again from zero.
	InboxSeq uint64
	Epoch    string

	// OnMessage receives stored messages (exactly once, in inboxSeq order,
	// including this user's own sends from any device) and online-only
	// messages (as they come). Typing indicators go to OnTyping instead when
	// it is set.
	OnMessage func(protocol.Message)
	// OnTyping is called when a peer starts or stops typing.
	OnTyping func(peer string, typing bool)
	// OnConnection is called on every connect (true) and loss (false).
	OnConnection func(connected bool)
	// OnError receives what goes wrong that no call of the app waits for:
	// a stored message the client cannot decode (a *DecodeError, in its
	// place in inboxSeq order: InboxSeq moves past it), other undecodable
	// messages and answers, and failed catch-up requests (which are sent
	// again). Nil: such errors are only logged and counted (Client.Stats).
	OnError func(error)

	// TypingInterval is the shortest time between two typing indicators a
	// Typist sends. Default 3s.
	TypingInterval time.Duration
	// TypingTimeout is how long a peer counts as typing after its last
	// indicator. Default 6s.
	TypingTimeout time.Duration
	// SyncPageSize is the number of messages per catch-up page (1-1000).
	// Default 200.
	SyncPageSize int
	// ConnectTimeout bounds each connection attempt. Default 10s.
	ConnectTimeout time.Duration
	// RequestTimeout is how long a request (a send, a history or a sync
	// request) waits for the server's answer, once published, before it is
	// published again with the same id: the server may have dropped the
	// answer (a full write queue), and answers a repeated send from its
	// first outcome. Time spent disconnected does not count. Default 10s.
	RequestTimeout time.Duration
	// RequestRetries is how many times a request is published again after
	// RequestTimeout passed without an answer; then SendMessage and History
	// return ErrTimeout, and the catch-up starts a new sync request. Default
	// 2 (3 tries); -1 means none.
	RequestRetries int
	// MaxAhead bounds the stored messages the client holds because they
	// arrived beyond a hole in inboxSeq (waiting for the catch-up to fill
	// it). At the bound, further ones are not held, and the catch-up runs
	// again to fetch them from the history. Default 1000 (1-100000).
	MaxAhead int
	// MaxReconnectInterval caps the backoff between reconnect attempts.
	// Default 30s.
	MaxReconnectInterval time.Duration
	// TLS configures tls:// and wss:// brokers.
	TLS *tls.Config
	// Logger receives the client's diagnostics. Default: discard.
	Logger *slog.Logger

	hooks *testHooks // set by tests only (export_test.go); nil otherwise
}

// testHooks let tests of this package reach inside a Client.
type testHooks struct {
	newMessageID func() string // replaces the generator of message ids
	subscribed   func()        // runs in onConnect between the SUBACK and marking the client up
	lost         func()        // runs at the end of onLost
}

func (c Config) withDefaults() Config {
	if c.DeviceID == "" {
		c.DeviceID = "sdk-" + randomHex(6)
	}
	if c.TypingInterval == 0 {
		c.TypingInterval = 3 * time.Second
	}
	if c.TypingTimeout == 0 {
		c.TypingTimeout = 6 * time.Second
	}
	if c.SyncPageSize == 0 {
		c.SyncPageSize = 200
	}
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = 10 * time.Second
	}
	if c.RequestTimeout == 0 {
		c.RequestTimeout = 10 * time.Second
	}
	if c.RequestRetries == 0 {
		c.RequestRetries = 2
	}
	if c.MaxAhead == 0 {
		c.MaxAhead = 1000
	}
	if c.MaxReconnectInterval == 0 {
		c.MaxReconnectInterval = 30 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

func (c Config) validate() error {
	switch {
	case c.Broker == "":
		return errors.New("client: Config.Broker is required")
	case !protocol.ValidUserID(c.User):
		return fmt.Errorf("client: Config.User %q is not a user ID", c.User)
	case c.Token == "" && c.TokenFunc == nil:
		return errors.New("client: Config.Token or TokenFunc is required")
	case c.SyncPageSize < 1 || c.SyncPageSize > protocol.MaxPageLimit:
		return fmt.Errorf("client: Config.SyncPageSize %d is outside 1 to %d", c.SyncPageSize, protocol.MaxPageLimit)
	case c.RequestTimeout < 0:
		return fmt.Errorf("client: Config.RequestTimeout %v is negative", c.RequestTimeout)
	case c.RequestRetries < -1:
		return fmt.Errorf("client: Config.RequestRetries %d is below -1", c.RequestRetries)
	case c.MaxAhead < 1 || c.MaxAhead > 100000:
		return fmt.Errorf("client: Config.MaxAhead %d is outside 1 to 100000", c.MaxAhead)
	}
	return nil
}

// Client is one connected device of a user.
type Client struct {
	cfg  Config
	log  *slog.Logger
	mqtt paho.Client
	run  *dispatcher
	// dialed is set when Dial returns the client: subscribe errors are then
	// retried instead of failing Dial.
	dialed atomic.Bool

	mu       sync.Mutex             // guards the fields below
	up       chan struct{}          // closed while connected; replaced when the connection is lost
	lost     chan struct{}          // closed when the current connection is lost
	closed   bool                   //
	connects uint64                 // onConnect calls; a later one supersedes an earlier
	pending  map[string]chan []byte // request id -> its answer
	cursor   uint64                 // highest inboxSeq delivered to OnMessage
	epoch    string                 // epoch of cursor
	ahead    map[uint64]entry       // stored messages beyond cursor+1; at most cfg.MaxAhead
	syncing  bool                   // a catch-up is running
	resync   bool                   // run the catch-up again when it ends
	typists  map[string]*Typist     // by peer
	watching map[string]*peerTyping // by peer
	done     chan struct{}          // closed by Close

	stats struct { // counters of Stats
		timeouts, aheadDropped, undecodable atomic.Uint64
	}
}

// Dial connects to the broker, subscribes and returns. It starts catching up
// from Config.InboxSeq in the background. It fails with ErrNotAuthorized if
// the credentials are refused; other first-connect errors are returned as
// they are, and ctx bounds the whole call.
func Dial(ctx context.Context, cfg Config) (*Client, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	c := &Client{
		cfg: cfg, log: cfg.Logger, run: newDispatcher(),
		up: make(chan struct{}), lost: make(chan struct{}),
		pending: map[string]chan []byte{}, cursor: cfg.InboxSeq, epoch: cfg.Epoch,
		ahead: map[uint64]entry{}, typists: map[string]*Typist{},
		watching: map[string]*peerTyping{}, done: make(chan struct{}),
	}
	subscribed := make(chan error, 1) // the first subscribe error of Dial's connect
	opts := paho.NewClientOptions().AddBroker(cfg.Broker).SetClientID(cfg.DeviceID).
		SetCleanSession(!cfg.Persistent).SetOrderMatters(true).SetKeepAlive(30 * time.Second).
		SetAutoReconnect(true).SetConnectRetry(false).SetMaxReconnectInterval(cfg.MaxReconnectInterval).
		SetConnectTimeout(cfg.ConnectTimeout).SetTLSConfig(cfg.TLS).
		SetCredentialsProvider(func() (string, string) {
			if cfg.TokenFunc == nil {
				return cfg.User, cfg.Token
			}
			tok, err := cfg.TokenFunc()
			if err != nil {
				c.log.Error("token refresh failed", "error", err)
			}
			return cfg.User, tok
		}).
		SetOnConnectHandler(func(paho.Client) { c.onConnect(subscribed) }).
		SetConnectionLostHandler(func(_ paho.Client, err error) { c.onLost(err) })
	c.mqtt = paho.NewClient(opts)
	up := c.up // the first; closed by the first onConnect that subscribed
	tok := c.mqtt.Connect()
	select {
	case <-tok.Done():
	case <-ctx.Done():
		// paho cannot abort its attempt: its goroutines end with it, within
		// ConnectTimeout, and disconnect if it succeeded.
		c.shutdown(0)
		return nil, ctx.Err()
	}
	if err := tok.Error(); err != nil {
		c.Close()
		if errors.Is(err, pahopackets.ErrorRefusedNotAuthorised) || errors.Is(err, pahopackets.ErrorRefusedBadUsernameOrPassword) {
			return nil, ErrNotAuthorized
		}
		return nil, fmt.Errorf("client: connect %s: %w", cfg.Broker, err)
	}
	select {
	case <-up:
		c.dialed.Store(true)
		return c, nil
	case err := <-subscribed:
		c.Close()
		return nil, err
	case <-ctx.Done():
		c.Close()
		return nil, ctx.Err()
	}
}

// onConnect subscribes, marks the client connected and starts a catch-up.
// paho runs it on a goroutine of its own after every connect, and runs
// onLost on another: the state is decided under c.mu from paho's own view
// of the connection, whatever order the two run in.
//
// A subscribe that fails or gets no SUBACK within ConnectTimeout is tried
// again with backoff while the connection lasts; the first failure of
// Dial's connect goes to dialErr instead, and Dial fails with it.
func (c *Client) onConnect(dialErr chan<- error) {
	c.mu.Lock()
	c.connects++
	me := c.connects
	c.mu.Unlock()
	u := c.cfg.User
	filters := map[string]byte{protocol.InboxTopic(u): 1, protocol.OnlineFilter(u): 0, protocol.ReplyTopic(u): 1}
	for backoff := 100 * time.Millisecond; ; backoff = min(2*backoff, c.cfg.MaxReconnectInterval) {
		err := c.subscribe(filters)
		if err == nil {
			break
		}
		c.log.Error("subscribe failed", "error", err)
		if !c.dialed.Load() {
			select {
			case dialErr <- err:
			default:
			}
			return
		}
		if !c.mqtt.IsConnectionOpen() {
			return // the next connect subscribes
		}
		if !c.pause(backoff) {
			return // closed
		}
		c.mu.Lock()
		superseded := c.connects != me
		c.mu.Unlock()
		if superseded {
			return
		}
	}
	if h := c.cfg.hooks; h != nil && h.subscribed != nil {
		h.subscribed()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.connects != me || !c.mqtt.IsConnectionOpen() {
		// Closed, or this connection was lost after its SUBACK (its onLost
		// may have run already) and the next connect takes over.
		return
	}
	select {
	case <-c.up:
		// Still up from a connection whose onLost has not run yet (paho
		// reconnected first). Requests waiting on it are sent again.
		close(c.lost)
		c.lost = make(chan struct{})
		c.connection(false)
	default:
		close(c.up)
	}
	c.connection(true)
	c.log.Info("connected", "broker", c.cfg.Broker, "user", u)
	go c.catchUp()
}

// subscribe subscribes to filters and waits for the SUBACK.
func (c *Client) subscribe(filters map[string]byte) error {
	tok := c.mqtt.SubscribeMultiple(filters, c.route)
	if !tok.WaitTimeout(c.cfg.ConnectTimeout) {
		return fmt.Errorf("client: subscribe: no SUBACK within %v", c.cfg.ConnectTimeout)
	}
	if err := tok.Error(); err != nil {
		return fmt.Errorf("client: subscribe: %w", err)
	}
	for f, code := range tok.(*paho.SubscribeToken).Result() {
		// With a persistent session present, mochi may refuse a repeated
		// SUBSCRIBE whose packet id collides with a pending delivery; the
		// session still holds the subscription.
		if code >= 0x80 && !c.cfg.Persistent {
			return fmt.Errorf("client: subscription %s refused (%#x)", f, code)
		}
	}
	return nil
}

// onLost marks the client disconnected, unless paho has connected again
// already (that connection's onConnect then does it). paho runs it on a
// goroutine of its own.
func (c *Client) onLost(err error) {
	c.log.Warn("connection lost", "error", err)
	c.mu.Lock()
	select {
	case <-c.up:
		if !c.mqtt.IsConnectionOpen() {
			c.up = make(chan struct{})
			close(c.lost)
			c.lost = make(chan struct{})
			c.connection(false)
		}
	default:
	}
	c.mu.Unlock()
	if h := c.cfg.hooks; h != nil && h.lost != nil {
		h.lost()
	}
}

// connection reports a connect (true) or loss (false) to OnConnection.
// c.mu is held, so that reports keep the order of the state changes.
func (c *Client) connection(up bool) {
	if c.cfg.OnConnection != nil && !c.closed {
		c.run.do(func() { c.cfg.OnConnection(up) })
	}
}

// route handles everything that arrives, on paho's goroutine.
func (c *Client) route(_ paho.Client, m paho.Message) {
	switch _, kind := protocol.ParseTopic(m.Topic()); kind {
	case protocol.TopicInbox, protocol.TopicOnline:
		msg, bad := decodeMessage(m.Topic(), m.Payload())
		switch {
		case bad != nil && kind == protocol.TopicInbox && !bad.OnlineUserOnly && bad.InboxSeq > 0:
			// Its place in inboxSeq is known: report it there.
			c.acceptStored(entry{bad: bad})
			c.fillGap()
		case bad != nil:
			c.undecodable(bad)
		case kind == protocol.TopicOnline || msg.OnlineUserOnly:
			c.acceptOnline(msg)
		default:
			c.acceptStored(entry{m: msg})
			c.fillGap()
		}
	case protocol.TopicReply:
		id := replyID(m.Payload())
		c.mu.Lock()
		ch := c.pending[id]
		delete(c.pending, id)
		c.mu.Unlock()
		if ch == nil {
			if id == "" {
				c.undecodable(&DecodeError{Topic: m.Topic(), Err: errors.New("answer without an id")})
			}
			return // an answer to a request that returned already
		}
		select {
		case ch <- m.Payload():
		default: // an answer to an earlier try is waiting already
		}
	}
}

// undecodable counts and reports something the client could not decode.
func (c *Client) undecodable(e *DecodeError) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.undecodableLocked(e)
}

func (c *Client) undecodableLocked(e *DecodeError) {
	c.stats.undecodable.Add(1)
	c.log.Error("undecodable", "topic", e.Topic, "msg_id", e.MsgID, "inbox_seq", e.InboxSeq, "error", e.Err)
	c.reportLocked(e)
}

// reportLocked passes err to OnError, in order with the other callbacks.
// c.mu is held.
func (c *Client) reportLocked(err error) {
	if c.cfg.OnError != nil && !c.closed {
		c.run.do(func() { c.cfg.OnError(err) })
	}
}

// entry is a stored message in inboxSeq order: one decoded, or one the
// client could not decode, whose place is reported to OnError instead.
type entry struct {
	m   protocol.Message
	bad *DecodeError // set if m could not be decoded
}

func (e entry) seq() uint64 {
	if e.bad != nil {
		return e.bad.InboxSeq
	}
	return e.m.InboxSeq
}

// acceptStored passes a stored message to OnMessage (or its decode error
// to OnError) if it is the next in inboxSeq order, holds it if it is ahead,
// and drops it if seen before.
func (c *Client) acceptStored(e entry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	seq := e.seq()
	switch {
	case seq <= c.cursor:
		return // delivered before (a resend, or a sync overlapping live delivery)
	case seq > c.cursor+1:
		if _, held := c.ahead[seq]; !held && len(c.ahead) >= c.cfg.MaxAhead {
			// The history has it: the catch-up fetches it.
			c.stats.aheadDropped.Add(1)
			c.resync = true
			return
		}
		c.ahead[seq] = e
		return
	}
	c.deliverLocked(e)
	for {
		next, ok := c.ahead[c.cursor+1]
		if !ok {
			return
		}
		delete(c.ahead, c.cursor+1)
		c.deliverLocked(next)
	}
}

func (c *Client) deliverLocked(e entry) {
	c.cursor = e.seq()
	if e.bad != nil {
		c.undecodableLocked(e.bad)
		return
	}
	m := e.m
	if c.cfg.OnTyping != nil && m.From != c.cfg.User {
		c.typingCleared(m.From, m.Time)
	}
	if c.cfg.OnMessage != nil {
		c.run.do(func() { c.cfg.OnMessage(m) })
	}
}

// acceptSynced is acceptStored for a message from a sync answer. A sync
// answer returns everything the server still has, so a hole in it is
// messages the server's retention pruned: the cursor moves past them.
func (c *Client) acceptSynced(e entry) {
	seq := e.seq()
	c.mu.Lock()
	if seq > c.cursor+1 {
		c.log.Debug("pruned by the server", "from", c.cursor+1, "to", seq-1)
		for s := range c.ahead {
			if s < seq {
				delete(c.ahead, s)
			}
		}
		c.cursor = seq - 1
	}
	c.mu.Unlock()
	c.acceptStored(e)
}

// fillGap starts a catch-up if messages are held beyond a hole.
func (c *Client) fillGap() {
	c.mu.Lock()
	gap := len(c.ahead) > 0
	c.mu.Unlock()
	if gap {
		go c.catchUp()
	}
}

// catchUp syncs from the cursor until the server has nothing more. Only one
// runs at a time; a request for another while it runs makes it go round
// once more.
func (c *Client) catchUp() {
	c.mu.Lock()
	if c.syncing {
		c.resync = true
		c.mu.Unlock()
		return
	}
	c.syncing = true
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.syncing = false
		c.mu.Unlock()
	}()
	for {
		c.mu.Lock()
		after := c.cursor
		c.resync = false
		c.mu.Unlock()
		topic := protocol.SyncTopic(c.cfg.User)
		answer, err := c.request(context.Background(), topic, func(id string) any {
			return protocol.SyncRequest{ID: id, After: after, Limit: c.cfg.SyncPageSize}
		})
		var page protocol.Page
		var bad []*DecodeError
		if err == nil {
			if page, bad, err = decodePage(protocol.ReplyTopic(c.cfg.User), answer); err != nil {
				err = c.undecodableAnswer(err)
			} else {
				err = serverError(page.Error)
			}
		}
		if err != nil {
			if errors.Is(err, ErrClosed) {
				return
			}
			c.log.Error("catch-up request failed; sending another", "error", err, "after", after)
			c.mu.Lock()
			c.reportLocked(fmt.Errorf("client: catch-up after inboxSeq %d: %w", after, err))
			c.mu.Unlock()
			if !errors.Is(err, ErrTimeout) && !c.pause(c.cfg.RequestTimeout) {
				return // closed
			}
			continue
		}
		c.mu.Lock()
		if c.epoch != "" && page.Epoch != c.epoch {
			c.log.Warn("server history was reset; starting over", "old_epoch", c.epoch, "epoch", page.Epoch)
			c.cursor, c.ahead = 0, map[uint64]entry{}
			c.epoch = page.Epoch
			c.mu.Unlock()
			continue
		}
		c.epoch = page.Epoch
		c.mu.Unlock()
		for _, e := range merge(page.Messages, bad) {
			c.acceptSynced(e)
		}
		c.mu.Lock()
		again := page.More || c.resync
		c.mu.Unlock()
		if !again {
			return
		}
	}
}

// merge returns the messages of a sync page and those of it the client could
// not decode but knows the place of, in inboxSeq order. The others are
// reported; the cursor moves past them as past pruned messages.
func merge(good []protocol.Message, bad []*DecodeError) []entry {
	out := make([]entry, 0, len(good)+len(bad))
	for _, m := range good {
		out = append(out, entry{m: m})
	}
	for _, b := range bad {
		out = append(out, entry{bad: b})
	}
	slices.SortStableFunc(out, func(a, b entry) int { return cmp.Compare(a.seq(), b.seq()) })
	return out
}

// undecodableAnswer counts and reports an answer that could not be
// decoded, and returns the error for the request that waited for it.
func (c *Client) undecodableAnswer(err error) error {
	e := &DecodeError{Topic: protocol.ReplyTopic(c.cfg.User), Err: err}
	c.undecodable(e)
	return e
}

// pause waits for d, and reports false if the client was closed first.
func (c *Client) pause(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-c.done:
		return false
	}
}

// request publishes the request that build makes with a fresh id to topic,
// and returns the answer. If the connection drops before the answer comes,
// it waits for the next connection and publishes the same request again.
func (c *Client) request(ctx context.Context, topic string, build func(id string) any) ([]byte, error) {
	id := c.newID()
	payload, err := json.Marshal(build(id))
	if err != nil {
		return nil, err
	}
	answer, _, err := c.exchange(ctx, topic, id, payload)
	return answer, err
}

// newID returns an id for a request or message that no client ever used
// before, across app restarts and devices: an xid (time, machine, process
// and counter). The server remembers message ids for as long as it keeps
// the message, so a counter that restarts with the app would collide.
func (c *Client) newID() string {
	return xid.New().String()
}

// newMessageID returns the id of a message sent without one: newID, unless
// a test replaces it.
func (c *Client) newMessageID() string {
	if c.cfg.hooks != nil && c.cfg.hooks.newMessageID != nil {
		return c.cfg.hooks.newMessageID()
	}
	return c.newID()
}

// exchange publishes payload, the request with the given id, to topic and
// returns the answer, and how many times it published the request.
func (c *Client) exchange(ctx context.Context, topic, id string, payload []byte) (answer []byte, sent int, err error) {
	answers := make(chan []byte, 1) // the first answer to any try
	timeouts := 0                   // tries that got no answer in time
	defer func() {
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
	}()
	for {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return nil, sent, ErrClosed
		}
		up, lost := c.up, c.lost
		c.pending[id] = answers
		c.mu.Unlock()
		select { // wait until connected
		case <-up:
		case <-ctx.Done():
			return nil, sent, ctx.Err()
		case <-c.done:
			return nil, sent, ErrClosed
		}
		// QoS 0: the answer is the acknowledgement, and this loop resends
		// after a reconnect. At QoS 1 paho would also keep and resend the
		// request itself, and its resend races with its writer (paho v1.5.1,
		// client.resume under -race).
		tok := c.mqtt.Publish(topic, 0, false, payload)
		select {
		case <-tok.Done():
		case <-ctx.Done():
			return nil, sent, ctx.Err()
		case <-c.done:
			return nil, sent, ErrClosed
		}
		if tok.Error() != nil {
			c.log.Debug("request not sent; retrying after reconnect", "id", id, "error", tok.Error())
			select {
			case <-lost:
			case <-ctx.Done():
				return nil, sent, ctx.Err()
			case <-c.done:
				return nil, sent, ErrClosed
			}
			continue
		}
		sent++
		timer := time.NewTimer(c.cfg.RequestTimeout)
		select {
		case a := <-answers:
			timer.Stop()
			return a, sent, nil
		case <-lost:
			timer.Stop()
			c.log.Debug("connection lost before the answer; sending again", "id", id)
		case <-timer.C:
			c.stats.timeouts.Add(1)
			if timeouts++; timeouts > c.cfg.RequestRetries {
				return nil, sent, fmt.Errorf("%w: no answer to %s within %v, %d tries", ErrTimeout, id, c.cfg.RequestTimeout, timeouts)
			}
			c.log.Warn("no answer; sending again", "id", id, "timeout", c.cfg.RequestTimeout)
		case <-ctx.Done():
			timer.Stop()
			return nil, sent, ctx.Err()
		case <-c.done:
			timer.Stop()
			return nil, sent, ErrClosed
		}
	}
}

// InboxSeq returns the inboxSeq of the last stored message passed to
// OnMessage (or queued for it). Save it with Epoch to resume later.
func (c *Client) InboxSeq() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cursor
}

// Epoch returns the server history's epoch that InboxSeq belongs to; empty
// until the first catch-up answered.
func (c *Client) Epoch() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.epoch
}

// Stats are counters of a Client since Dial.
type Stats struct {
	// RequestTimeouts counts tries of a request that got no answer within
	// Config.RequestTimeout.
	RequestTimeouts uint64
	// Ahead is the number of stored messages held now beyond a hole in
	// inboxSeq, at most Config.MaxAhead; AheadDropped counts those not held
	// because of that bound (the catch-up fetched them again).
	Ahead        int
	AheadDropped uint64
	// Undecodable counts messages and answers the client could not decode;
	// each was reported to Config.OnError or to the request that waited.
	Undecodable uint64
}

// Stats returns the client's counters. It does not block.
func (c *Client) Stats() Stats {
	c.mu.Lock()
	ahead := len(c.ahead)
	c.mu.Unlock()
	return Stats{RequestTimeouts: c.stats.timeouts.Load(), Ahead: ahead, AheadDropped: c.stats.aheadDropped.Load(),
		Undecodable: c.stats.undecodable.Load()}
}

// Connected reports whether the client is connected and subscribed now.
func (c *Client) Connected() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	select {
	case <-c.up:
		return true
	default:
		return false
	}
}

// Close disconnects and stops the client. Calls waiting for answers return
// ErrClosed; callbacks already queued still run before Close returns.
// Later calls return nil.
func (c *Client) Close() error {
	c.shutdown(250)
	return nil
}

// shutdown is Close, waiting at most quiesce ms for paho to send the
// DISCONNECT.
func (c *Client) shutdown(quiesce uint) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	close(c.done)
	for _, w := range c.watching {
		if w.timer != nil {
			w.timer.Stop()
		}
	}
	c.mu.Unlock()
	c.mqtt.Disconnect(quiesce)
	c.run.stop()
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
