package server

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"log/slog"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// wait is the deadline of every expectation in these tests; none is a
// speed check.
const wait = 10 * time.Second

// smallBuf is the socket buffer size of the pairs: small, so that a peer
// that does not read stalls the writer after a few kilobytes.
const smallBuf = 4 << 10

// connPair is a wrapped server side and its peer, over real loopback
// sockets: plain TCP, TLS, or WebSocket (through the listener's wsConn).
type connPair struct {
	dc   *deviceConn
	peer net.Conn // reads what dc writes, as a byte stream
	raw  net.Conn // the server side's socket
}

// newPair connects a peer to a fresh listener of kind ("tcp", "tls", "ws")
// and wraps the server side with set. With small, both sides have small
// socket buffers (smallBuf).
func newPair(t *testing.T, kind string, set *connSet, small bool) connPair {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err == nil && small {
			err = c.(*net.TCPConn).SetReadBuffer(smallBuf)
		}
		return c, err
	}
	shrink := func(c net.Conn) net.Conn {
		if !small {
			return c
		}
		if err := c.(*net.TCPConn).SetWriteBuffer(smallBuf); err != nil {
			t.Fatal(err)
		}
		return c
	}
	var p connPair
	switch kind {
	case "tcp", "tls":
		accepted := make(chan net.Conn, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c
		}()
		peer, err := dial(context.Background(), "tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		raw, ok := <-accepted
		if !ok {
			t.Fatal("accept failed")
		}
		p.raw, p.peer = shrink(raw), peer
		server := p.raw
		if kind == "tls" {
			cert := testCert(t)
			srv := tls.Server(p.raw, &tls.Config{Certificates: []tls.Certificate{cert}})
			cli := tls.Client(peer, &tls.Config{InsecureSkipVerify: true}) // a self-signed test certificate
			errc := make(chan error, 1)
			go func() { errc <- srv.Handshake() }()
			if err := cli.Handshake(); err != nil {
				t.Fatal(err)
			}
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
			server, p.peer = srv, cli
		}
		p.dc = set.wrap(server)
	case "ws":
		conns := make(chan *wsConn, 1)
		up := websocket.Upgrader{Subprotocols: []string{"mqtt"}}
		hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			ws, err := up.Upgrade(w, r, nil)
			if err != nil {
				return
			}
			conns <- &wsConn{Conn: shrink(ws.UnderlyingConn()), ws: ws}
		})}
		go hs.Serve(ln)
		t.Cleanup(func() { hs.Close() })
		d := websocket.Dialer{NetDialContext: dial, Subprotocols: []string{"mqtt"}}
		ws, _, err := d.Dial("ws://"+ln.Addr().String()+"/", nil)
		if err != nil {
			t.Fatal(err)
		}
		server := <-conns
		p.raw, p.peer = server.Conn, &wsConn{Conn: ws.UnderlyingConn(), ws: ws}
		p.dc = set.wrap(server)
	default:
		t.Fatalf("kind %q", kind)
	}
	t.Cleanup(func() {
		p.peer.Close()
		p.dc.closeAndWait()
	})
	return p
}

// testCert makes a self-signed certificate for the TLS pairs.
func testCert(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "conn test"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func testSet(maxPending int, writeTimeout time.Duration) *connSet {
	return newConnSet(maxPending, writeTimeout, slog.New(slog.DiscardHandler))
}

var kinds = []string{"tcp", "tls", "ws"}

// waitDone waits until dc's socket is closed.
func waitDone(t *testing.T, dc *deviceConn, what string) {
	t.Helper()
	select {
	case <-dc.done:
	case <-time.After(wait):
		t.Fatalf("socket not closed within %v: %s", wait, what)
	}
}

// expectPeerClosed reads the peer to its end: the server closed it.
func expectPeerClosed(t *testing.T, peer net.Conn) {
	t.Helper()
	peer.SetReadDeadline(time.Now().Add(wait))
	_, err := io.Copy(io.Discard, peer)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("peer still open after %v", wait)
	}
}

// TestDeviceConnHealthyPeerGetsEveryByte: writes of random sizes, the last
// one just before Close (a DISCONNECT, say), all reach a peer that reads, in
// order, though some were still pending when Close was called.
func TestDeviceConnHealthyPeerGetsEveryByte(t *testing.T) {
	for _, kind := range kinds {
		t.Run(kind, func(t *testing.T) {
			set := testSet(64<<20, time.Minute)
			p := newPair(t, kind, set, false)
			type result struct {
				got []byte
				err error
			}
			read := make(chan result, 1)
			go func() {
				p.peer.SetReadDeadline(time.Now().Add(wait))
				var got bytes.Buffer
				_, err := io.Copy(&got, p.peer)
				read <- result{got.Bytes(), err}
			}()
			var sent bytes.Buffer
			for i := 0; sent.Len() < 1<<20; i++ {
				b := make([]byte, 1+mrand.IntN(8<<10))
				for j := range b {
					b[j] = byte(i + j)
				}
				sent.Write(b)
				if n, err := p.dc.Write(b); n != len(b) || err != nil {
					t.Fatalf("write %d: %d %v", i, n, err)
				}
			}
			last := []byte{0xe0, 0x00} // a DISCONNECT
			sent.Write(last)
			if _, err := p.dc.Write(last); err != nil {
				t.Fatal(err)
			}
			if err := p.dc.Close(); err != nil {
				t.Fatal(err)
			}
			r := <-read
			if errors.Is(r.err, os.ErrDeadlineExceeded) {
				t.Fatalf("peer not closed after %d bytes", len(r.got))
			}
			if !bytes.Equal(r.got, sent.Bytes()) {
				t.Fatalf("peer got %d bytes, want %d (equal prefix: %v)", len(r.got), sent.Len(),
					bytes.HasPrefix(sent.Bytes(), r.got))
			}
			waitDone(t, p.dc, "after the final flush")
			if n := set.slowConsumers(); n != 0 {
				t.Fatalf("%d slow consumers", n)
			}
		})
	}
}

// TestDeviceConnWriteNeverBlocks: with a peer that never reads, Writes of
// far more than the socket buffers return at once, and Close neither
// blocks nor lingers longer than its linger (the write timeout here is a
// minute: a Close waiting for it would miss the deadline).
func TestDeviceConnWriteNeverBlocks(t *testing.T) {
	for _, kind := range kinds {
		t.Run(kind, func(t *testing.T) {
			set := testSet(64<<20, time.Minute)
			set.linger = 100 * time.Millisecond // the test's own bound, to keep it short
			p := newPair(t, kind, set, true)
			b := make([]byte, 4<<10)
			for i := 0; i < (8<<20)/len(b); i++ {
				if _, err := p.dc.Write(b); err != nil {
					t.Fatalf("write %d: %v", i, err)
				}
			}
			p.dc.mu.Lock()
			queued := p.dc.queued
			p.dc.mu.Unlock()
			if queued < 4<<20 {
				t.Fatalf("only %d bytes pending: the peer's socket took the rest, the test did not stall it", queued)
			}
			if err := p.dc.Close(); err != nil {
				t.Fatal(err)
			}
			waitDone(t, p.dc, "the linger of Close must be bounded")
			if _, err := p.dc.Read(b); !errors.Is(err, net.ErrClosed) {
				t.Fatalf("read after close: %v", err)
			}
			if n := set.slowConsumers(); n != 0 {
				t.Fatalf("a closed connection was counted as a slow consumer (%d)", n)
			}
		})
	}
}

// TestDeviceConnBoundClosesSlowConsumer: once the pending bytes would pass
// the bound, the connection is closed at once, counted, and every later
// Read and Write fails with ErrSlowConsumer.
func TestDeviceConnBoundClosesSlowConsumer(t *testing.T) {
	for _, kind := range kinds {
		t.Run(kind, func(t *testing.T) {
			const bound = 1 << 20
			set := testSet(bound, time.Minute)
			p := newPair(t, kind, set, true)
			b := make([]byte, 4<<10)
			accepted := 0
			var err error
			for err == nil {
				if accepted > 64<<20 {
					t.Fatal("the bound never closed the connection")
				}
				var n int
				n, err = p.dc.Write(b)
				accepted += n
			}
			if !errors.Is(err, ErrSlowConsumer) {
				t.Fatalf("write: %v, want ErrSlowConsumer", err)
			}
			if accepted > bound+smallBuf*64 { // what the sockets took on the way, generously
				t.Fatalf("%d bytes accepted with a bound of %d", accepted, bound)
			}
			waitDone(t, p.dc, "a slow consumer is closed at once")
			if n := set.slowConsumers(); n != 1 {
				t.Fatalf("%d slow consumers, want 1", n)
			}
			if _, err := p.dc.Read(b); !errors.Is(err, ErrSlowConsumer) {
				t.Fatalf("read: %v", err)
			}
			if _, err := p.dc.Write(b); !errors.Is(err, ErrSlowConsumer) {
				t.Fatalf("write after: %v", err)
			}
			expectPeerClosed(t, p.peer)
		})
	}
}

// TestDeviceConnDeadlineClosesSlowConsumer: with data pending and a socket
// that takes nothing for the write timeout, the connection is closed and
// counted, and a Read blocked in it returns.
func TestDeviceConnDeadlineClosesSlowConsumer(t *testing.T) {
	for _, kind := range kinds {
		t.Run(kind, func(t *testing.T) {
			set := testSet(64<<20, 100*time.Millisecond)
			p := newPair(t, kind, set, true)
			readErr := make(chan error, 1)
			go func() {
				_, err := p.dc.Read(make([]byte, 16)) // the peer sends nothing
				readErr <- err
			}()
			b := make([]byte, 2<<20)
			if _, err := p.dc.Write(b); err != nil {
				t.Fatal(err)
			}
			waitDone(t, p.dc, "the write timeout must close a stalled connection")
			if n := set.slowConsumers(); n != 1 {
				t.Fatalf("%d slow consumers, want 1", n)
			}
			select {
			case err := <-readErr:
				if !errors.Is(err, ErrSlowConsumer) {
					t.Fatalf("blocked read: %v", err)
				}
			case <-time.After(wait):
				t.Fatal("blocked read did not return")
			}
			if _, err := p.dc.Write(b[:1]); !errors.Is(err, ErrSlowConsumer) {
				t.Fatalf("write after: %v", err)
			}
		})
	}
}

// TestDeviceConnReadAfterClose: a Read blocked when Close is called
// returns, with or without bytes pending for a stalled peer, and so does
// every later Read.
func TestDeviceConnReadAfterClose(t *testing.T) {
	for _, pending := range []bool{false, true} {
		t.Run(map[bool]string{false: "idle", true: "pending"}[pending], func(t *testing.T) {
			set := testSet(64<<20, time.Minute)
			set.linger = 100 * time.Millisecond
			p := newPair(t, "tcp", set, true)
			if pending {
				if _, err := p.dc.Write(make([]byte, 2<<20)); err != nil {
					t.Fatal(err)
				}
			}
			readErr := make(chan error, 1)
			go func() {
				_, err := p.dc.Read(make([]byte, 16))
				readErr <- err
			}()
			p.dc.Close()
			select {
			case err := <-readErr:
				if !errors.Is(err, net.ErrClosed) {
					t.Fatalf("blocked read: %v", err)
				}
			case <-time.After(wait):
				t.Fatal("a Read blocked in the socket did not return on Close")
			}
			if _, err := p.dc.Read(make([]byte, 16)); !errors.Is(err, net.ErrClosed) {
				t.Fatalf("read after close: %v", err)
			}
			waitDone(t, p.dc, "close")
		})
	}
}

// TestDeviceConnDeadlinesPassThrough: read deadlines (mochi's keepalive)
// and addresses are the socket's; a write deadline does not make writes
// fail.
func TestDeviceConnDeadlinesPassThrough(t *testing.T) {
	for _, kind := range kinds {
		t.Run(kind, func(t *testing.T) {
			p := newPair(t, kind, testSet(64<<20, time.Minute), true)
			if p.dc.LocalAddr().String() != p.raw.LocalAddr().String() || p.dc.RemoteAddr().String() != p.raw.RemoteAddr().String() {
				t.Fatalf("addresses %v %v, socket %v %v", p.dc.LocalAddr(), p.dc.RemoteAddr(), p.raw.LocalAddr(), p.raw.RemoteAddr())
			}
			b := make([]byte, 16)
			p.dc.SetWriteDeadline(time.Now().Add(-time.Second))
			if _, err := p.dc.Write([]byte("hello")); err != nil {
				t.Fatalf("write: %v", err)
			}
			p.peer.SetReadDeadline(time.Now().Add(wait))
			if _, err := io.ReadFull(p.peer, b[:5]); err != nil || string(b[:5]) != "hello" {
				t.Fatalf("peer read %q %v", b[:5], err)
			}
			go p.peer.Write([]byte("ping"))
			p.dc.SetDeadline(time.Now().Add(wait))
			if _, err := io.ReadFull(p.dc, b[:4]); err != nil || string(b[:4]) != "ping" {
				t.Fatalf("read %q %v", b[:4], err)
			}
			// Last: a WebSocket cannot be read from after a read timeout.
			p.dc.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
			var ne net.Error
			if _, err := p.dc.Read(b); !errors.As(err, &ne) || !ne.Timeout() {
				t.Fatalf("read past the read deadline: %v", err)
			}
			if kind == "ws" {
				return
			}
			p.dc.SetDeadline(time.Now().Add(-time.Second))
			if _, err := p.dc.Read(b); !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("read past the deadline: %v", err)
			}
		})
	}
}

// TestDeviceConnIdleMemory measures what the wrapper costs an idle
// connection that has written once (a CONNACK), and checks that an idle
// connection has no goroutine of its own.
func TestDeviceConnIdleMemory(t *testing.T) {
	const n = 1000
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var servers, peers []net.Conn
	defer func() {
		for _, c := range append(servers, peers...) {
			c.Close()
		}
	}()
	for range n {
		peer, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		peers = append(peers, peer)
		c, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		servers = append(servers, c)
	}
	set := testSet(DefaultMaxPendingBytes, DefaultWriteTimeout)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	goroutines := runtime.NumGoroutine()
	wrapped := make([]*deviceConn, n)
	connack := []byte{0x20, 0x02, 0x00, 0x00}
	buf := make([]byte, 4)
	for i, c := range servers {
		wrapped[i] = set.wrap(c)
		if _, err := wrapped[i].Write(connack); err != nil {
			t.Fatal(err)
		}
		peers[i].SetReadDeadline(time.Now().Add(wait))
		if _, err := io.ReadFull(peers[i], buf); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(wait)
	for runtime.NumGoroutine() > goroutines {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines for %d idle connections", runtime.NumGoroutine()-goroutines, n)
		}
		time.Sleep(time.Millisecond) // polling a condition
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	t.Logf("wrapper of an idle connection: %d bytes of heap (%d connections)",
		(int64(after.HeapAlloc)-int64(before.HeapAlloc))/n, n)
	runtime.KeepAlive(wrapped)
	for _, dc := range wrapped {
		dc.closeAndWait()
	}
}
