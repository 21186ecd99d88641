// Package cluster joins mqttd nodes through NATS: it is the bridge.Router of
// a node in a cluster. Core NATS carries everything; nothing is kept in
// NATS, and no node is special.
//
// Subjects (U is a user ID with '.' written as ':', since '.' separates
// NATS subject tokens and ':' is not allowed in user IDs):
//
//	imbridge.stored.U   a stored message committed on one node, encoded with
//	                    U's inboxSeq, for U's sessions on the others.
//	                    Subscribed by each node holding a session of U.
//	imbridge.session.U  a client ID of U that connected on one node: the
//	                    others end their session with that ID. Subscribed
//	                    like stored.
//	imbridge.online.U   request: deliver this online-only message to one
//	                    connected device of U; the reply is the outcome.
//	                    Subscribed, in queue group "online", by each node
//	                    with a connected device of U, so NATS hands each
//	                    request to one of them.
//	imbridge.count      request: how many sessions of a user do you hold?
//	                    Every node answers.
//	imbridge.node       each node's name, every second: who is in the
//	                    cluster (for count, /healthz and /metrics).
//
// The connection uses NATS's no-echo option: a node never receives what it
// published itself.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/imbridge/imbridge/bridge"
)

// Subject prefixes.
const (
	subjStored    = "imbridge.stored."
	subjSession   = "imbridge.session."
	subjOnline    = "imbridge.online."
	subjCount     = "imbridge.count"
	subjNode      = "imbridge.node"
	onlineQueue   = "online"
	heartbeat     = time.Second     // how often a node says it is there
	peerTimeout   = 3 * heartbeat   // a node not heard of for this long is gone
	connectTimout = 5 * time.Second // per NATS server, at start
)

// Options configures a Router.
type Options struct {
	// URLs are the NATS servers to connect to (any of them; the client
	// learns the rest of a NATS cluster from them). Required.
	URLs []string
	// Node is this node's name, unique in the cluster. Required.
	Node string
	// Logger receives connection events. Default: discard.
	Logger *slog.Logger
}

// Router is a bridge.Router over NATS. Create it with Connect.
type Router struct {
	nc   *nats.Conn
	name string
	log  *slog.Logger
	node bridge.Node // set by Start

	mu       sync.Mutex // guards the fields below
	watching map[watchKey][]*nats.Subscription
	fixed    []*nats.Subscription
	peers    map[string]time.Time // other nodes, by name: when last heard of
	beating  bool                 // the heartbeat runs
	closed   bool

	// Per-user subscriptions deliver into these channels, one per kind of
	// subject, each drained in order by one goroutine: a node holds no
	// goroutine per user. A channel that is full drops what comes (NATS's
	// slow consumer, logged): a stored message then reaches its devices by
	// their sync, a takeover by the device's own reconnect.
	stored, session, online chan *nats.Msg
	workers                 sync.WaitGroup

	stop chan struct{} // closed by Close: stops the heartbeat
	done chan struct{} // closed when the heartbeat has stopped
}

// inbound is the length of each of a Router's channels of inbound messages.
const inbound = 1 << 16

type watchKey struct {
	user string
	what bridge.Interest
}

// Connect connects to NATS. It fails, rather than waiting, when no server in
// opts.URLs answers within a few seconds each. Once connected, the Router
// reconnects by itself for as long as it lives.
func Connect(opts Options) (*Router, error) {
	if len(opts.URLs) == 0 {
		return nil, errors.New("cluster: no NATS server given")
	}
	if opts.Node == "" {
		return nil, errors.New("cluster: no node name given")
	}
	if strings.ContainsAny(opts.Node, " \t\r\n") {
		return nil, fmt.Errorf("cluster: node name %q has white space", opts.Node)
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Router{name: opts.Node, log: log, watching: map[watchKey][]*nats.Subscription{},
		peers: map[string]time.Time{}, stop: make(chan struct{}), done: make(chan struct{}),
		stored: make(chan *nats.Msg, inbound), session: make(chan *nats.Msg, inbound), online: make(chan *nats.Msg, inbound)}
	nc, err := nats.Connect(strings.Join(opts.URLs, ","),
		nats.Name("imbridge "+opts.Node),
		nats.NoEcho(),
		nats.Timeout(connectTimout),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250*time.Millisecond),
		// Nothing is kept for later while NATS is out of reach: an
		// online-only message would arrive late after its sender was told
		// it was not delivered, and a takeover could end a newer session.
		// Stored messages reach the devices by their gap sync instead.
		nats.ReconnectBufSize(-1),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			log.Warn("cluster: NATS connection lost; reconnecting", "error", err)
		}),
		nats.ReconnectHandler(func(c *nats.Conn) {
			log.Info("cluster: NATS connection restored", "server", c.ConnectedUrlRedacted())
		}),
		nats.ErrorHandler(func(_ *nats.Conn, s *nats.Subscription, err error) {
			subj := ""
			if s != nil {
				subj = s.Subject
			}
			log.Warn("cluster: NATS error", "subject", subj, "error", err)
		}),
	)
	if err != nil {
		return nil, fmt.Errorf("cluster: connect to NATS %s: %w", strings.Join(opts.URLs, ","), err)
	}
	r.nc = nc
	return r, nil
}

// Start subscribes to the subjects every node serves and starts the
// heartbeat.
func (r *Router) Start(node bridge.Node) error {
	r.node = node
	count, err := r.nc.Subscribe(subjCount, r.onCount)
	if err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	hb, err := r.nc.Subscribe(subjNode, r.onHeartbeat)
	if err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	r.mu.Lock()
	r.fixed = []*nats.Subscription{count, hb}
	r.mu.Unlock()
	if err := r.nc.Flush(); err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	for ch, handle := range map[chan *nats.Msg]func(*nats.Msg){r.stored: r.onStored, r.session: r.onSession, r.online: r.onOnline} {
		r.workers.Add(1)
		go func() {
			defer r.workers.Done()
			for m := range ch {
				handle(m)
			}
		}()
	}
	r.mu.Lock()
	r.beating = true
	r.mu.Unlock()
	go r.beat()
	return nil
}

// beat publishes this node's name every heartbeat until Close.
func (r *Router) beat() {
	defer close(r.done)
	t := time.NewTicker(heartbeat)
	defer t.Stop()
	for {
		_ = r.nc.Publish(subjNode, []byte(r.name))
		select {
		case <-r.stop:
			return
		case <-t.C:
		}
	}
}

func (r *Router) onHeartbeat(m *nats.Msg) {
	name := string(m.Data)
	r.mu.Lock()
	_, known := r.peers[name]
	r.peers[name] = time.Now()
	r.mu.Unlock()
	if !known {
		r.log.Info("cluster: node joined", "node", name)
	}
}

// Peers returns the names of the other nodes heard of lately, sorted.
func (r *Router) Peers() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	for name, at := range r.peers {
		if time.Since(at) > peerTimeout {
			delete(r.peers, name)
			r.log.Info("cluster: node gone", "node", name)
		}
	}
	return slices.Sorted(maps.Keys(r.peers))
}

// Connected reports whether the connection to NATS is up.
func (r *Router) Connected() bool { return r.nc.IsConnected() }

// Node returns this node's name.
func (r *Router) Node() string { return r.name }

// token writes user as one subject token.
func token(user string) string { return strings.ReplaceAll(user, ".", ":") }

// userOf reads the user from the last token of subject.
func userOf(subject string) string {
	return strings.ReplaceAll(subject[strings.LastIndexByte(subject, '.')+1:], ":", ".")
}

// Watch subscribes to, or unsubscribes from, user's subjects.
func (r *Router) Watch(user string, what bridge.Interest, on bool) {
	k := watchKey{user, what}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return
	}
	if !on {
		for _, s := range r.watching[k] {
			_ = s.Unsubscribe()
		}
		delete(r.watching, k)
		return
	}
	if r.watching[k] != nil {
		return
	}
	var subs []*nats.Subscription
	var err error
	add := func(s *nats.Subscription, e error) {
		if e != nil {
			err = e
			return
		}
		subs = append(subs, s)
	}
	tok := token(user)
	switch what {
	case bridge.Sessions:
		add(r.nc.ChanSubscribe(subjStored+tok, r.stored))
		add(r.nc.ChanSubscribe(subjSession+tok, r.session))
	case bridge.Connected:
		add(r.nc.ChanQueueSubscribe(subjOnline+tok, onlineQueue, r.online))
	}
	if err != nil {
		// Only a closed connection refuses a subscription: the node is
		// shutting down.
		r.log.Warn("cluster: subscribe", "user", user, "error", err)
	}
	r.watching[k] = subs
}

func (r *Router) onStored(m *nats.Msg) { r.node.DeliverStored(userOf(m.Subject), m.Data) }

func (r *Router) onSession(m *nats.Msg) { r.node.EndSession(string(m.Data)) }

func (r *Router) onOnline(m *nats.Msg) {
	out := r.node.DeliverOnline(userOf(m.Subject), m.Data)
	_ = m.Respond([]byte(strconv.Itoa(int(out))))
}

func (r *Router) onCount(m *nats.Msg) {
	user, clientID, _ := strings.Cut(string(m.Data), "\x00")
	_ = m.Respond([]byte(strconv.Itoa(r.node.Sessions(user, clientID))))
}

// Stored publishes a committed message for user's sessions on other nodes.
// A message lost on the way (NATS down, a slow node) reaches the devices by
// their gap sync.
func (r *Router) Stored(user string, payload []byte) {
	if err := r.nc.Publish(subjStored+token(user), payload); err != nil {
		r.log.Debug("cluster: stored message not forwarded", "user", user, "error", err)
	}
}

// Takeover publishes that clientID connected on this node.
func (r *Router) Takeover(user, clientID string) {
	if err := r.nc.Publish(subjSession+token(user), []byte(clientID)); err != nil {
		r.log.Warn("cluster: takeover not sent", "client", clientID, "error", err)
	}
}

// Online asks one node with a connected device of user to deliver payload.
func (r *Router) Online(ctx context.Context, user string, payload []byte) (bridge.Outcome, error) {
	m, err := r.nc.RequestWithContext(ctx, subjOnline+token(user), payload)
	if errors.Is(err, nats.ErrNoResponders) {
		return bridge.Offline, bridge.ErrNoDevice
	}
	if err != nil {
		return bridge.Offline, err
	}
	n, err := strconv.Atoi(string(m.Data))
	if err != nil || n < int(bridge.Delivered) || n > int(bridge.Offline) {
		return bridge.Offline, fmt.Errorf("cluster: bad answer %q to an online-only message", m.Data)
	}
	return bridge.Outcome(n), nil
}

// Sessions asks every other node how many sessions of user it holds, and
// waits for the answers of the nodes heard of lately, or for ctx. It
// returns the sum of the answers, with an error when some node did not
// answer.
func (r *Router) Sessions(ctx context.Context, user, clientID string) (int, error) {
	want := len(r.Peers())
	if want == 0 {
		return 0, nil
	}
	inbox := r.nc.NewRespInbox()
	sub, err := r.nc.SubscribeSync(inbox)
	if err != nil {
		return 0, err
	}
	defer sub.Unsubscribe()
	if err := r.nc.PublishRequest(subjCount, inbox, []byte(user+"\x00"+clientID)); err != nil {
		return 0, err
	}
	sum := 0
	for got := 0; got < want; got++ {
		m, err := sub.NextMsgWithContext(ctx)
		if err != nil {
			return sum, fmt.Errorf("cluster: %d of %d nodes answered: %w", got, want, err)
		}
		n, err := strconv.Atoi(string(m.Data))
		if err != nil {
			return sum, fmt.Errorf("cluster: bad answer %q to a count", m.Data)
		}
		sum += n
	}
	return sum, nil
}

// Close stops the heartbeat and closes the connection, after a best-effort
// flush of what is buffered. Safe to call more than once.
func (r *Router) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	beating := r.beating
	r.mu.Unlock()
	if beating {
		close(r.stop)
		<-r.done
	}
	_ = r.nc.FlushTimeout(time.Second)
	r.nc.Close() // no subscription delivers after this
	if beating {
		close(r.stored)
		close(r.session)
		close(r.online)
		r.workers.Wait()
	}
	return nil
}
