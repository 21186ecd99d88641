package server

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
)

// guarded wraps a mochi listener. mochi runs each client's whole life, read
// loop included, inside the goroutine that calls the establish function, so
// recovering there turns a panic in packet handling (such as mochi issue #501,
// a truncated MQTT 5 SUBSCRIBE) into the loss of that one connection.
type guarded struct {
	listeners.Listener
	srv    *mqtt.Server
	log    *slog.Logger
	panics *atomic.Int64
	onDrop func(cl *mqtt.Client, err error) // called for the client of a recovered connection
	conns  *connSet                         // wraps each connection so that writes never block (conn.go)
}

// Serve serves the wrapped listener with a guarded establish function.
func (g *guarded) Serve(establish listeners.EstablishFn) {
	g.Listener.Serve(g.guard(establish))
}

// guard wraps establish so that a panic in it closes that connection only.
func (g *guarded) guard(establish listeners.EstablishFn) listeners.EstablishFn {
	return func(id string, c net.Conn) (err error) {
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
type tcpListener struct {
	id   string
	addr string
	tls  *tls.Config // nil: plain TCP
	ln   net.Listener
	once sync.Once
}

func newTCPListener(id, addr string, tlsConfig *tls.Config) *tcpListener {
	return &tcpListener{id: id, addr: addr, tls: tlsConfig}
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
	return listen(&l.ln, l.addr, l.tls)
}

// listen binds addr, with TLS when tlsConfig is set.
func listen(ln *net.Listener, addr string, tlsConfig *tls.Config) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	if tlsConfig != nil {
		l = tls.NewListener(l, tlsConfig)
	}
	*ln = l
	return nil
}

// Serve accepts connections until Close, each on its own goroutine.
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

// wsListener serves MQTT over WebSocket (subprotocol "mqtt", binary frames)
// on every path. Unlike mochi's, it binds in Init, so that ":0" works and
// Address reports the bound port; like tcpListener, it closes its socket
// before its clients.
type wsListener struct {
	id        string
	addr      string
	tls       *tls.Config // nil: plain WebSocket
	ln        net.Listener
	http      *http.Server
	upgrader  websocket.Upgrader
	establish listeners.EstablishFn
	once      sync.Once
}

func newWSListener(id, addr string, tlsConfig *tls.Config) *wsListener {
	return &wsListener{id: id, addr: addr, tls: tlsConfig, upgrader: websocket.Upgrader{
		Subprotocols: []string{"mqtt"},
		// Browsers on any origin may connect: a device proves who it is with
		// its token in CONNECT, not with cookies.
		CheckOrigin: func(*http.Request) bool { return true },
	}}
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
	if err := listen(&l.ln, l.addr, l.tls); err != nil {
		return err
	}
	l.http = &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(l.serveWS)}
	return nil
}

func (l *wsListener) serveWS(w http.ResponseWriter, r *http.Request) {
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
