package server

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

// guarded wraps a mochi listener. mochi runs each client's whole life, read
// loop included, inside the goroutine that calls the establish function, so
// recovering there turns a panic in packet handling (such as mochi issue #501,
// a truncated MQTT 5 SUBSCRIBE) into the loss of that one connection.
//
// Before mochi sees a connection, the guard reads its CONNECT within the
// connect deadline and the size cap (gate.awaitConnect): mochi allocates a
// client, its buffers and its write queue only for a socket that has sent a
// complete, small CONNECT.
type guarded struct {
	listeners.Listener
	srv    *mqtt.Server
	gate   *gate
	log    *slog.Logger
	panics *atomic.Int64
	onDrop func(cl *mqtt.Client, err error) // called for the client of a recovered connection
	conns  *connSet                         // wraps each connection so that writes never block (conn.go)
}

// Serve serves the wrapped listener with a guarded establish function.
func (g *guarded) Serve(establish listeners.EstablishFn) {
	g.Listener.Serve(g.guard(establish))
}

// Close closes the wrapped listener and stops its clients. It does not use
// mochi's own closer: in mochi v2.7.9 Clients.GetByListener takes the
// clients' read lock twice (through Len), so a client being removed at the
// same moment, whose write lock waits between the two, deadlocks Shutdown.
func (g *guarded) Close(listeners.CloseFn) {
	g.Listener.Close(func(id string) {
		for _, cl := range g.srv.Clients.GetAll() { // one read lock; a copy
			if cl.Net.Listener == id {
				cl.Stop(errListenerClosed)
			}
		}
	})
}

// errListenerClosed is the reason a client is stopped when its listener closes.
var errListenerClosed = errors.New("listener closed")

// guard wraps establish so that a panic in it closes that connection only.
func (g *guarded) guard(establish listeners.EstablishFn) listeners.EstablishFn {
	return func(id string, c net.Conn) (err error) {
		c, ok := g.gate.awaitConnect(c)
		if !ok {
			return nil // closed and counted
		}
		dc := g.conns.wrap(c)
		defer dc.closeAndWait() // lets a final DISCONNECT out before the WebSocket listener closes the socket
		c = dc
		defer func() {
			if v := recover(); v != nil {
				g.panics.Add(1)
				err = fmt.Errorf("panic in connection handling: %v", v)
				g.log.Error("connection handler panicked; connection closed", "listener", id,
					"remote", c.RemoteAddr().String(), "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
				c.Close()
				g.cleanup(c, err)
			}
		}()
		if err := establish(id, c); err != nil && !errors.Is(err, io.EOF) {
			g.log.Debug("connection ended", "listener", id, "remote", c.RemoteAddr().String(), "error", err)
		}
		return nil
	}
}

// cleanup does for the client of a recovered connection what mochi would
// have done after its read loop: drop its session and subscriptions.
func (g *guarded) cleanup(c net.Conn, err error) {
	for id, cl := range g.srv.Clients.GetAll() {
		if cl.Net.Conn != c {
			continue
		}
		cl.Stop(err)
		if !cl.IsTakenOver() {
			cl.ClearInflights()
			g.srv.UnsubscribeClient(cl)
			g.srv.Clients.Delete(id)
		}
		g.onDrop(cl, err)
		return
	}
}

// tcpListener serves MQTT over TCP. mochi's own TCP listener disconnects its
// clients before it closes its socket, and drops (without closing) a
// connection accepted in between; a device that reconnects at once then hangs
// until its connect timeout. This one closes the socket first.
//
// Its sockets pass the gate (admitListener): Accept errors such as EMFILE
// are retried, and the per-IP and pre-login caps apply.
type tcpListener struct {
	id   string
	addr string
	tls  *tls.Config // nil: plain TCP
	gate *gate
	log  *slog.Logger
	ln   net.Listener
	once sync.Once
}

func newTCPListener(id, addr string, tlsConfig *tls.Config, g *gate, log *slog.Logger) *tcpListener {
	return &tcpListener{id: id, addr: addr, tls: tlsConfig, gate: g, log: log}
}

func (l *tcpListener) ID() string { return l.id }
func (l *tcpListener) Protocol() string {
	if l.tls != nil {
		return "tls"
	}
	return "tcp"
}
func (l *tcpListener) Address() string { return boundAddr(l.ln, l.addr) }

func (l *tcpListener) Init(*slog.Logger) error {
	return listen(&l.ln, l.id, l.addr, l.tls, l.gate, true, l.log)
}

// listen binds addr behind the gate g, with TLS (over the gate) when
// tlsConfig is set. mqtt says whether its sockets are MQTT, and so count as
// pre-login until their CONNECT.
func listen(ln *net.Listener, id, addr string, tlsConfig *tls.Config, g *gate, mqtt bool, log *slog.Logger) error {
	raw, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	var l net.Listener = newAdmitListener(raw, g, id, mqtt, log)
	if tlsConfig != nil {
		l = tls.NewListener(l, tlsConfig)
	}
	*ln = l
	return nil
}

// Serve accepts connections until Close, each on its own goroutine. Accept
// errors other than a closed listener are retried by the admitListener.
func (l *tcpListener) Serve(establish listeners.EstablishFn) {
	for {
		conn, err := l.ln.Accept()
		if err != nil {
			return // closed
		}
		go func() { _ = establish(l.id, conn) }()
	}
}

func (l *tcpListener) Close(closeClients listeners.CloseFn) {
	l.once.Do(func() {
		if l.ln != nil {
			l.ln.Close()
		}
		closeClients(l.id)
	})
}

// boundAddr returns the address ln is bound to, or addr before Init.
func boundAddr(ln net.Listener, addr string) string {
	if ln != nil {
		return ln.Addr().String()
	}
	return addr
}

// wsPaths are the paths MQTT over WebSocket is served on; others get 404.
var wsPaths = map[string]bool{"/mqtt": true, "/": true}

// wsListener serves MQTT over WebSocket (subprotocol "mqtt", binary frames)
// on wsPaths, to browser pages of the allowed origins. Unlike mochi's, it
// binds in Init, so that ":0" works and Address reports the bound port; like
// tcpListener, it closes its socket before its clients, and its sockets pass
// the gate.
//
// The upgrade request must come within the connect timeout; its HTTP
// deadlines are replaced by the CONNECT deadline once upgraded (gorilla
// clears them), and keep-alive is off: the port serves upgrades only.
type wsListener struct {
	id        string
	addr      string
	tls       *tls.Config // nil: plain WebSocket
	gate      *gate
	log       *slog.Logger
	ln        net.Listener
	http      *http.Server
	upgrader  websocket.Upgrader
	establish listeners.EstablishFn
	once      sync.Once
}

func newWSListener(id, addr string, tlsConfig *tls.Config, g *gate, origins []string, log *slog.Logger) *wsListener {
	return &wsListener{id: id, addr: addr, tls: tlsConfig, gate: g, log: log, upgrader: websocket.Upgrader{
		Subprotocols:     []string{"mqtt"},
		HandshakeTimeout: g.connectTimeout,
		CheckOrigin:      originChecker(origins),
	}}
}

// originChecker allows requests without an Origin header (not browsers),
// and pages of the listed origins ("*": any); with no list, pages whose host
// name is that of the request's Host header.
func originChecker(allowed []string) func(*http.Request) bool {
	anyOrigin := false
	list := map[string]bool{}
	for _, o := range allowed {
		if o == "*" {
			anyOrigin = true
		}
		list[strings.ToLower(strings.TrimSuffix(o, "/"))] = true
	}
	return func(r *http.Request) bool {
		origin := r.Header.Get("Origin")
		if origin == "" || anyOrigin {
			return true
		}
		u, err := url.Parse(origin)
		if err != nil || u.Host == "" {
			return false // "null" and the like
		}
		if len(list) > 0 {
			return list[strings.ToLower(u.Scheme+"://"+u.Host)]
		}
		return strings.EqualFold(u.Hostname(), (&url.URL{Host: r.Host}).Hostname())
	}
}

func (l *wsListener) ID() string { return l.id }
func (l *wsListener) Protocol() string {
	if l.tls != nil {
		return "wss"
	}
	return "ws"
}
func (l *wsListener) Address() string { return boundAddr(l.ln, l.addr) }

func (l *wsListener) Init(*slog.Logger) error {
	if err := listen(&l.ln, l.id, l.addr, l.tls, l.gate, true, l.log); err != nil {
		return err
	}
	d := l.gate.connectTimeout
	l.http = &http.Server{Handler: http.HandlerFunc(l.serveWS),
		ReadHeaderTimeout: d, ReadTimeout: d, WriteTimeout: d, MaxHeaderBytes: l.gate.maxHeaderBytes,
		ErrorLog: slog.NewLogLogger(l.log.Handler(), slog.LevelDebug)}
	l.http.SetKeepAlivesEnabled(false)
	return nil
}

func (l *wsListener) serveWS(w http.ResponseWriter, r *http.Request) {
	if !wsPaths[r.URL.Path] {
		http.NotFound(w, r)
		return
	}
	ws, err := l.upgrader.Upgrade(w, r, nil)
	if err != nil {
		return // the upgrader has answered
	}
	defer ws.Close()
	_ = l.establish(l.id, &wsConn{Conn: ws.UnderlyingConn(), ws: ws})
}

// Serve serves until Close. establish is set before the first connection is
// accepted, so serveWS reads it without a lock.
func (l *wsListener) Serve(establish listeners.EstablishFn) {
	l.establish = establish
	_ = l.http.Serve(l.ln)
}

func (l *wsListener) Close(closeClients listeners.CloseFn) {
	l.once.Do(func() {
		if l.http != nil {
			l.http.Close() // closes the socket; hijacked connections stay open
		}
		if l.ln != nil {
			l.ln.Close()
		}
		closeClients(l.id)
	})
}

// wsConn presents a WebSocket as the byte stream mochi reads MQTT from.
type wsConn struct {
	net.Conn
	ws *websocket.Conn
	mu sync.Mutex // guards writes: mochi writes from more than one goroutine
	r  io.Reader  // the current message; owned by the single reader
}

func (c *wsConn) Read(p []byte) (int, error) {
	for {
		if c.r == nil {
			kind, r, err := c.ws.NextReader()
			if err != nil {
				return 0, err
			}
			if kind != websocket.BinaryMessage {
				return 0, errors.New("websocket: MQTT needs binary frames")
			}
			c.r = r
		}
		n, err := c.r.Read(p)
		if errors.Is(err, io.EOF) {
			c.r = nil
			if n == 0 {
				continue
			}
			err = nil
		}
		return n, err
	}
}

func (c *wsConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.ws.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Reasons a socket is closed by the gate before login, as counted in
// /healthz and /metrics.
const (
	closedIPLimit         = "ip_limit"          // over Config.MaxConnsPerIP
	closedPreLoginLimit   = "prelogin_limit"    // over Config.MaxPreLogin
	closedConnectTimeout  = "connect_timeout"   // no complete CONNECT within Config.ConnectTimeout
	closedConnectTooLarge = "connect_too_large" // CONNECT over Config.MaxConnectSize
)

// Accept retries: like net/http's Server.Serve, 5 ms doubling to 1 s.
const (
	acceptMinDelay = 5 * time.Millisecond
	acceptMaxDelay = time.Second
	// acceptLogEvery bounds the log lines of a listener's Accept errors.
	acceptLogEvery = 10 * time.Second
	// degradedFor is how long after its last Accept error a listener counts
	// as degraded, unless it accepts a socket before.
	degradedFor = 5 * time.Second
)

var (
	errNotConnect      = errors.New("first packet is not CONNECT")
	errConnectTooLarge = errors.New("CONNECT larger than the server accepts")
	errMalformedLength = errors.New("malformed remaining length")
	errGateClosed      = errors.New("server shutting down")
)

// gate admits the sockets of all the listeners of one Server. It caps the
// open sockets per IP group and the MQTT sockets that have not sent a
// complete CONNECT, closes those at shutdown, and keeps each listener's
// Accept statistics.
type gate struct {
	connectTimeout time.Duration
	maxConnect     int
	maxPerIP       int // -1: no cap
	maxPreLogin    int // -1: no cap
	maxHeaderBytes int // of the WebSocket listeners' upgrade requests
	log            *slog.Logger

	mu       sync.Mutex               // guards the fields below
	perIP    map[netip.Prefix]int     // open sockets per IP group; an entry only while its count is positive, so at most one per open socket
	preLogin map[*admitted]struct{}   // MQTT sockets without a complete CONNECT yet; at most maxPreLogin
	stats    map[string]*acceptStats  // per listener ID; one per listener
	closed   bool                     // set by close: nothing more is admitted
	refused  map[string]*atomic.Int64 // sockets closed, by reason; fixed keys, filled by newGate
}

func newGate(c Config) *gate {
	g := &gate{
		connectTimeout: c.ConnectTimeout, maxConnect: c.MaxConnectSize,
		maxPerIP: c.MaxConnsPerIP, maxPreLogin: c.MaxPreLogin, maxHeaderBytes: c.HTTP.MaxHeaderBytes,
		log:   c.Logger,
		perIP: map[netip.Prefix]int{}, preLogin: map[*admitted]struct{}{}, stats: map[string]*acceptStats{},
		refused: map[string]*atomic.Int64{},
	}
	for _, r := range []string{closedIPLimit, closedPreLoginLimit, closedConnectTimeout, closedConnectTooLarge} {
		g.refused[r] = new(atomic.Int64)
	}
	return g
}

// ipGroup returns the group a remote address is counted in: the IPv4
// address, or the /64 of an IPv6 address. Not TCP: the zero Prefix, not
// counted.
func ipGroup(a net.Addr) netip.Prefix {
	t, ok := a.(*net.TCPAddr)
	if !ok {
		return netip.Prefix{}
	}
	ip := t.AddrPort().Addr().Unmap()
	bits := 64
	if ip.Is4() {
		bits = 32
	}
	p, err := ip.WithZone("").Prefix(bits)
	if err != nil {
		return netip.Prefix{}
	}
	return p
}

// admit counts c in and returns it wrapped, or closes it and returns nil
// when a cap is reached. mqtt: c counts as pre-login until its CONNECT.
func (g *gate) admit(c net.Conn, mqtt bool) *admitted {
	a := &admitted{Conn: c, gate: g, group: ipGroup(c.RemoteAddr()), accepted: time.Now()}
	reason := ""
	g.mu.Lock()
	switch {
	case g.closed:
		reason = "closed"
	case g.maxPerIP > 0 && a.group.IsValid() && g.perIP[a.group] >= g.maxPerIP:
		reason = closedIPLimit
	case mqtt && g.maxPreLogin > 0 && len(g.preLogin) >= g.maxPreLogin:
		reason = closedPreLoginLimit
	default:
		if a.group.IsValid() {
			g.perIP[a.group]++
		}
		if mqtt {
			g.preLogin[a] = struct{}{}
		}
	}
	g.mu.Unlock()
	if reason != "" {
		if n := g.refused[reason]; n != nil {
			n.Add(1)
		}
		g.log.Debug("socket refused", "reason", reason, "remote", c.RemoteAddr().String())
		c.Close()
		return nil
	}
	return a
}

// release counts a closed socket out.
func (g *gate) release(a *admitted) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if a.group.IsValid() {
		if g.perIP[a.group]--; g.perIP[a.group] <= 0 {
			delete(g.perIP, a.group)
		}
	}
	delete(g.preLogin, a)
}

// loggedIn moves a from pre-login to logged in (its CONNECT is read). It
// reports false if the gate is closed: the socket must not reach mochi.
func (g *gate) loggedIn(a *admitted) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.preLogin, a)
	return !g.closed
}

// close admits nothing more and closes the pre-login sockets.
func (g *gate) close() {
	g.mu.Lock()
	g.closed = true
	pending := make([]*admitted, 0, len(g.preLogin))
	for a := range g.preLogin {
		pending = append(pending, a)
	}
	g.mu.Unlock()
	for _, a := range pending {
		a.Close()
	}
}

// preLoginCount returns the number of pre-login sockets now.
func (g *gate) preLoginCount() int64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return int64(len(g.preLogin))
}

// listener returns the Accept statistics of listener id, made on first use.
func (g *gate) listener(id string) *acceptStats {
	g.mu.Lock()
	defer g.mu.Unlock()
	s := g.stats[id]
	if s == nil {
		s = &acceptStats{id: id}
		g.stats[id] = s
	}
	return s
}

// listeners returns the Accept statistics of every listener.
func (g *gate) listeners() []*acceptStats {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make([]*acceptStats, 0, len(g.stats))
	for _, s := range g.stats {
		out = append(out, s)
	}
	return out
}

// awaitConnect reads c's CONNECT, which must come complete within the
// connect timeout of the socket's accept and be at most maxConnect bytes
// after its fixed header (checked before the body is read). It returns c
// with the CONNECT put back in front of its stream; on failure it closes c,
// counts why, and returns false.
func (g *gate) awaitConnect(c net.Conn) (net.Conn, bool) {
	a := admittedOf(c)
	start := time.Now()
	if a != nil {
		start = a.accepted
	}
	// Both directions are bounded while the CONNECT is awaited (a TLS
	// handshake writes too); after it, mochi sets the read deadline from the
	// keep-alive, and the write deadline must be cleared here: device writes
	// are bounded by deviceConn, and a deadline left on the socket would fail
	// every write once the connect timeout has passed.
	_ = c.SetDeadline(start.Add(g.connectTimeout))
	pk, err := readConnect(c, g.maxConnect)
	if err == nil {
		err = c.SetWriteDeadline(time.Time{})
	}
	if err == nil && a != nil && !g.loggedIn(a) {
		err = errGateClosed
	}
	if err != nil {
		var ne net.Error
		switch {
		case errors.Is(err, errConnectTooLarge):
			g.refused[closedConnectTooLarge].Add(1)
		case errors.As(err, &ne) && ne.Timeout():
			g.refused[closedConnectTimeout].Add(1)
		}
		g.log.Debug("socket closed before CONNECT", "remote", c.RemoteAddr().String(), "error", err)
		c.Close()
		return nil, false
	}
	return &replayConn{Conn: c, head: pk}, true
}

// readConnect reads the first packet from r, which must be a CONNECT with
// at most max bytes after its fixed header, and returns it whole. The size
// is checked on the fixed header, before the body is read.
func readConnect(r io.Reader, max int) ([]byte, error) {
	var hdr [5]byte // type byte and up to 4 bytes of remaining length
	if _, err := io.ReadFull(r, hdr[:1]); err != nil {
		return nil, err
	}
	if hdr[0]>>4 != packets.Connect {
		return nil, errNotConnect
	}
	n, mult, i := 0, 1, 1
	for ; ; i++ {
		if i == len(hdr) {
			return nil, errMalformedLength
		}
		if _, err := io.ReadFull(r, hdr[i:i+1]); err != nil {
			return nil, err
		}
		n += int(hdr[i]&0x7f) * mult
		if n > max { // later bytes only add to n
			return nil, errConnectTooLarge
		}
		if hdr[i]&0x80 == 0 {
			break
		}
		mult *= 128
	}
	pk := make([]byte, i+1+n)
	copy(pk, hdr[:i+1])
	if _, err := io.ReadFull(r, pk[i+1:]); err != nil {
		return nil, err
	}
	return pk, nil
}

// admitted is a socket the gate let in. Its first Close counts it out.
type admitted struct {
	net.Conn
	gate     *gate
	group    netip.Prefix // of the remote address; zero: not counted per IP
	accepted time.Time
	once     sync.Once
}

func (a *admitted) Close() error {
	err := a.Conn.Close()
	a.once.Do(func() { a.gate.release(a) })
	return err
}

// admittedOf finds the admitted socket under c (TLS and WebSocket
// included), or nil.
func admittedOf(c net.Conn) *admitted {
	for {
		switch v := c.(type) {
		case *admitted:
			return v
		case *tls.Conn:
			c = v.NetConn()
		case *wsConn:
			c = v.Conn
		default:
			return nil
		}
	}
}

// replayConn reads head before the rest of the stream: the CONNECT the gate
// read. Its single reader is mochi's read loop.
type replayConn struct {
	net.Conn
	head []byte
}

func (c *replayConn) Read(p []byte) (int, error) {
	if len(c.head) == 0 {
		return c.Conn.Read(p)
	}
	n := copy(p, c.head)
	c.head = c.head[n:]
	return n, nil
}

// acceptStats are one listener's Accept errors.
type acceptStats struct {
	id      string
	errors  atomic.Int64
	lastErr atomic.Int64 // unix nanoseconds of the last error; 0: none
	lastOK  atomic.Int64 // unix nanoseconds of the last accepted socket
	failing atomic.Bool  // an error was logged and no socket accepted since

	mu         sync.Mutex // guards logged and suppressed
	logged     time.Time  // when an error was last logged
	suppressed int64      // errors since then, not logged
}

// degraded reports whether the listener failed to accept in the last
// degradedFor and has not accepted since.
func (s *acceptStats) degraded(now time.Time) bool {
	last := s.lastErr.Load()
	return last != 0 && last > s.lastOK.Load() && now.UnixNano()-last < int64(degradedFor)
}

// failed counts an Accept error and logs it, at most once per acceptLogEvery.
func (s *acceptStats) failed(err error, retry time.Duration, log *slog.Logger) {
	now := time.Now()
	s.errors.Add(1)
	s.lastErr.Store(now.UnixNano())
	s.mu.Lock()
	if !s.logged.IsZero() && now.Sub(s.logged) < acceptLogEvery {
		s.suppressed++
		s.mu.Unlock()
		return
	}
	n := s.suppressed
	s.logged, s.suppressed = now, 0
	s.mu.Unlock()
	s.failing.Store(true)
	log.Error("accept failed; retrying", "listener", s.id, "error", err.Error(), "retry", retry, "unlogged", n)
}

// accepted notes an accepted socket, and logs the end of a run of errors.
func (s *acceptStats) accepted(log *slog.Logger) {
	s.lastOK.Store(time.Now().UnixNano())
	if s.failing.Load() && s.failing.CompareAndSwap(true, false) {
		log.Info("accepting again", "listener", s.id, "acceptErrors", s.errors.Load())
	}
}

// admitListener accepts sockets through the gate. Accept errors other than
// a closed listener (EMFILE, ENFILE, ECONNABORTED, ...) are counted, logged
// at a bounded rate and retried with backoff, so a listener never stops
// for good; sockets over a cap are closed and Accept goes on.
type admitListener struct {
	net.Listener
	gate  *gate
	stats *acceptStats
	mqtt  bool // its sockets are MQTT: pre-login until their CONNECT
	log   *slog.Logger
	done  chan struct{} // closed by Close: ends a backoff wait
	once  sync.Once
}

func newAdmitListener(l net.Listener, g *gate, id string, mqtt bool, log *slog.Logger) *admitListener {
	return &admitListener{Listener: l, gate: g, stats: g.listener(id), mqtt: mqtt, log: log, done: make(chan struct{})}
}

// Accept blocks until a socket is admitted or the listener is closed.
func (l *admitListener) Accept() (net.Conn, error) {
	var delay time.Duration
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil, err
			}
			delay = min(max(2*delay, acceptMinDelay), acceptMaxDelay)
			l.stats.failed(err, delay, l.log)
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-l.done:
				t.Stop()
				return nil, net.ErrClosed
			}
			continue
		}
		delay = 0
		l.stats.accepted(l.log)
		if a := l.gate.admit(c, l.mqtt); a != nil {
			return a, nil
		}
	}
}

// Close closes the socket and ends a backoff wait of Accept.
func (l *admitListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return l.Listener.Close()
}
