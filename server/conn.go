package server

import (
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// ErrSlowConsumer ends a device connection that did not read what the node
// wrote to it: more than Config.MaxPendingBytes waited for its socket, or
// its socket accepted nothing for Config.WriteTimeout while data waited.
var ErrSlowConsumer = errors.New("server: slow consumer: device does not read")

// flushChunk is the most the flusher hands to the socket in one Write, so
// that progress is seen (and the write deadline measured) per chunk.
const flushChunk = 64 << 10

// closeLinger bounds how long Close keeps flushing what was written before
// it (a DISCONNECT, say) to a socket that does not take it. The connection's
// write deadline, and Config.WriteTimeout, shorten it.
const closeLinger = time.Second

// connSet wraps the accepted device connections of a node in deviceConns
// and keeps what they share: the bounds, the slow-consumer counter and the
// log. Safe for concurrent use.
type connSet struct {
	maxPending   int           // bytes a connection may hold unwritten; beyond it the connection is closed
	writeTimeout time.Duration // longest a flush may go without progress before the connection is closed
	linger       time.Duration // longest Close goes on flushing: min(closeLinger, writeTimeout)
	log          *slog.Logger

	slow       atomic.Int64   // connections closed as slow consumers
	lastLog    atomic.Int64   // time of the last slow-consumer log line, Unix ns
	suppressed atomic.Int64   // slow consumers not logged since that line
	open       sync.WaitGroup // wrapped connections whose socket is not closed yet
}

func newConnSet(maxPending int, writeTimeout time.Duration, log *slog.Logger) *connSet {
	return &connSet{maxPending: maxPending, writeTimeout: writeTimeout,
		linger: min(closeLinger, writeTimeout), log: log}
}

// wrap returns c as a deviceConn.
func (s *connSet) wrap(c net.Conn) *deviceConn {
	s.open.Add(1)
	return &deviceConn{Conn: c, set: s, done: make(chan struct{})}
}

// wait blocks until every wrapped connection's socket is closed: at most
// the linger after the last Close.
func (s *connSet) wait() { s.open.Wait() }

// slowConsumers returns how many connections were closed as slow consumers.
func (s *connSet) slowConsumers() int64 { return s.slow.Load() }

// slowConsumer counts c and logs it, at most one line a second for the node
// (the line says how many were not logged since the previous one).
func (s *connSet) slowConsumer(c *deviceConn, reason string, queued int) {
	s.slow.Add(1)
	now := time.Now().UnixNano()
	last := s.lastLog.Load()
	if now-last < int64(time.Second) || !s.lastLog.CompareAndSwap(last, now) {
		s.suppressed.Add(1)
		return
	}
	s.log.Warn("closing slow device connection", "remote", c.RemoteAddr().String(), "reason", reason,
		"pendingBytes", queued, "notLogged", s.suppressed.Swap(0))
}

// deviceConn is an accepted device connection whose Write never waits for
// the network: it appends to a pending buffer that a flusher goroutine,
// running only while data is pending, writes to the socket. mochi holds the
// client's lock across Write, and the delivery of a message to every
// subscriber takes that lock; a socket that does not drain must not hold it.
//
// A connection with more than connSet.maxPending bytes unwritten, or whose
// socket accepts nothing for connSet.writeTimeout while data is pending, is
// closed at once (ErrSlowConsumer): its device reconnects and syncs. Read,
// read deadlines and the addresses are the socket's. Write deadlines do not
// reach the socket (a TLS or WebSocket connection is broken for good once a
// write deadline expires); they only bound the linger of Close.
type deviceConn struct {
	net.Conn               // the accepted connection; Read and addresses pass through
	set      *connSet      // bounds and counters of the node
	done     chan struct{} // closed when the socket is closed
	closed   atomic.Bool   // Close was called or the connection failed: Read returns at once
	once     sync.Once     // closes the socket
	mu       sync.Mutex    // guards the fields below; innermost lock (Write runs under mochi's client lock); never held across a socket write
	timer    *time.Timer   // the flusher's watchdog, made by the first flush
	pending  []byte        // written, not yet taken by the flusher; nil when idle
	queued   int           // written, not yet accepted by the socket: pending plus the chunk being written; at most set.maxPending
	flushing bool          // a flusher goroutine runs
	progress time.Time     // when the flusher started or last finished a chunk
	closing  bool          // Close was called: flush what is pending, then close the socket
	lingerTo time.Time     // with closing and flushing: give up flushing then
	wdl      time.Time     // the write deadline set by the user; bounds the linger
	err      error         // why the connection failed (ErrSlowConsumer, a socket error); Writes return it
}

var _ net.Conn = (*deviceConn)(nil)

// Read reads from the socket; after Close or a failure it returns at once.
func (c *deviceConn) Read(p []byte) (int, error) {
	if c.closed.Load() {
		return 0, c.cause()
	}
	n, err := c.Conn.Read(p)
	if err != nil && c.closed.Load() {
		err = c.cause()
	}
	return n, err
}

// cause returns why reads and writes fail once the connection is closed.
func (c *deviceConn) cause() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return c.err
	}
	return net.ErrClosed
}

// Write appends p to the pending bytes and starts the flusher if none runs.
// It never blocks on the network. Over the bound it closes the connection
// and returns ErrSlowConsumer.
func (c *deviceConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.err != nil:
		return 0, c.err
	case c.closing:
		return 0, net.ErrClosed
	case c.queued+len(p) > c.set.maxPending:
		c.failLocked(ErrSlowConsumer, "pending bytes over the bound")
		return 0, ErrSlowConsumer
	}
	c.pending = append(c.pending, p...)
	c.queued += len(p)
	if !c.flushing {
		c.flushing = true
		c.progress = time.Now()
		if c.timer == nil {
			c.timer = time.AfterFunc(c.set.writeTimeout, c.watch)
		} else {
			c.timer.Reset(c.set.writeTimeout)
		}
		go c.flush()
	}
	return len(p), nil
}

// flush writes the pending bytes to the socket, a chunk at a time, until
// none are left, then ends; on the way out of a Close it closes the socket.
func (c *deviceConn) flush() {
	for {
		c.mu.Lock()
		if c.err != nil || len(c.pending) == 0 {
			c.flushing = false
			c.timer.Stop()
			c.pending = nil // an idle connection holds no buffer
			closing := c.closing && c.err == nil
			c.mu.Unlock()
			if closing {
				c.closeSocket(false)
			}
			return
		}
		// Write appends behind this chunk, never into it.
		n := min(len(c.pending), flushChunk)
		chunk := c.pending[:n:n]
		c.pending = c.pending[n:]
		c.mu.Unlock()

		_, err := c.Conn.Write(chunk)

		c.mu.Lock()
		c.queued -= n
		c.progress = time.Now()
		if err != nil && c.err == nil {
			c.failLocked(err, "")
		}
		c.mu.Unlock()
	}
}

// watch runs when the watchdog fires: it closes a connection whose flush
// made no progress for the write timeout, or whose linger is over, and
// otherwise sets the watchdog again.
func (c *deviceConn) watch() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.flushing || c.err != nil {
		return // a stale firing
	}
	now := time.Now()
	switch {
	case !now.Before(c.progress.Add(c.set.writeTimeout)):
		c.failLocked(ErrSlowConsumer, "no write progress within the write timeout")
	case c.closing && !now.Before(c.lingerTo):
		c.failLocked(net.ErrClosed, "") // closed by its owner; what was pending is dropped
	default:
		c.armLocked(now)
	}
}

// armLocked sets the watchdog to the stall deadline or the end of the
// linger, whichever is first.
func (c *deviceConn) armLocked(now time.Time) {
	next := c.progress.Add(c.set.writeTimeout)
	if c.closing && c.lingerTo.Before(next) {
		next = c.lingerTo
	}
	c.timer.Reset(next.Sub(now))
}

// failLocked ends the connection with err at once: pending bytes are
// dropped and the socket is closed without waiting. A non-empty reason
// counts it as a slow consumer.
func (c *deviceConn) failLocked(err error, reason string) {
	c.err = err
	c.closed.Store(true)
	if reason != "" {
		c.set.slowConsumer(c, reason, c.queued)
	}
	c.pending = nil
	c.closeSocket(true)
}

// closeSocket closes the socket once. hard resets it (RST): what the
// kernel still holds for a peer that does not read is dropped at once
// instead of being retried for minutes, and a TLS connection does not try
// to send close_notify (that write could wait 5 s on a stalled socket).
// Otherwise, the close_notify of a TLS connection is cut after the linger.
// It never blocks longer than the linger.
func (c *deviceConn) closeSocket(hard bool) {
	c.once.Do(func() {
		sock := socketOf(c.Conn)
		if hard {
			if tc, ok := tcpOf(sock).(*net.TCPConn); ok {
				_ = tc.SetLinger(0)
			}
			_ = sock.Close()
		} else if sock != c.Conn {
			t := time.AfterFunc(c.set.linger, func() { _ = sock.Close() })
			defer t.Stop()
		}
		_ = c.Conn.Close()
		close(c.done)
		c.set.open.Done()
	})
}

// socketOf returns the TCP connection under c's TLS and WebSocket layers and
// the listener's replay of the CONNECT it read first.
func socketOf(c net.Conn) net.Conn {
	switch x := c.(type) {
	case *tls.Conn:
		return socketOf(x.NetConn())
	case *wsConn:
		return socketOf(x.Conn)
	case *replayConn:
		return socketOf(x.Conn)
	case *admitted:
		return x // closing it also releases its place in the per-IP count
	}
	return c
}

// tcpOf returns the *net.TCPConn under a socket that the listeners admitted.
func tcpOf(c net.Conn) net.Conn {
	if a, ok := c.(*admitted); ok {
		return a.Conn
	}
	return c
}

// Close closes the connection. It does not block on the network: bytes
// still pending (a final DISCONNECT, say) go on being flushed in the
// background for at most the linger (shortened by a write deadline), then
// the socket is closed. A Read blocked in the socket returns at once.
func (c *deviceConn) Close() error {
	c.mu.Lock()
	if c.closing || c.err != nil {
		c.mu.Unlock()
		return nil
	}
	c.closing = true
	c.closed.Store(true)
	if !c.flushing {
		c.mu.Unlock()
		c.closeSocket(false)
		return nil
	}
	now := time.Now()
	c.lingerTo = now.Add(c.set.linger)
	if !c.wdl.IsZero() && c.wdl.Before(c.lingerTo) {
		c.lingerTo = c.wdl
	}
	c.armLocked(now)
	_ = c.Conn.SetReadDeadline(now) // wake a blocked Read
	c.mu.Unlock()
	return nil
}

// closeAndWait closes the connection and waits until its socket is closed:
// at most the linger.
func (c *deviceConn) closeAndWait() {
	_ = c.Close()
	<-c.done
}

// SetDeadline sets the read deadline of the socket and the write deadline
// that bounds the linger of Close.
func (c *deviceConn) SetDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.wdl = t
	if c.closing || c.err != nil {
		return net.ErrClosed // keep the deadline that woke the reader
	}
	return c.Conn.SetReadDeadline(t)
}

// SetReadDeadline sets the read deadline of the socket.
func (c *deviceConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing || c.err != nil {
		return net.ErrClosed
	}
	return c.Conn.SetReadDeadline(t)
}

// SetWriteDeadline bounds the linger of a later Close. Writes do not block,
// so it has no other effect.
func (c *deviceConn) SetWriteDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.wdl = t
	if c.closing && c.flushing && c.err == nil && !t.IsZero() && t.Before(c.lingerTo) {
		c.lingerTo = t
		c.armLocked(time.Now())
	}
	return nil
}
