package server_test

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/imbridge/imbridge/internal/poll"
	"github.com/imbridge/imbridge/internal/testdevice"
	"github.com/imbridge/imbridge/internal/testserver"
	"github.com/imbridge/imbridge/protocol"
	"github.com/imbridge/imbridge/server"
)

// dialIdle opens a TCP socket to addr that sends nothing; it is closed at
// cleanup.
func dialIdle(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, testdevice.Wait)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// closedWithin reads c until the server closes it or d passes, and
// reports whether it was closed. Data the server sends is skipped.
func closedWithin(c net.Conn, d time.Duration) bool {
	c.SetReadDeadline(time.Now().Add(d))
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	return !(errors.As(err, &ne) && ne.Timeout())
}

// memInUse returns the live heap and goroutine stacks after a collection.
func memInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc + m.StackInuse
}

// TestIdleSocketsClosedAfterConnectTimeout opens 1,000 sockets that never
// send a CONNECT: each is closed by the server once the connect timeout has
// passed since it was accepted, and counted. It reports the memory they
// held.
func TestIdleSocketsClosedAfterConnectTimeout(t *testing.T) {
	const sockets, timeout = 1000, 2 * time.Second
	n := testserver.Start(t, func(c *server.Config) {
		c.ConnectTimeout, c.MaxConnsPerIP, c.MaxPreLogin = timeout, -1, -1
	})
	before := memInUse()
	conns := make([]net.Conn, sockets)
	t.Cleanup(func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	})
	dialed := make([]time.Time, sockets)
	for i := range conns {
		dialed[i] = time.Now()
		c, err := net.DialTimeout("tcp", n.MQTTAddr(), testdevice.Wait)
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c
	}
	waitFor(t, "every socket to be accepted", func() bool { return n.Health().PreLogin == sockets })
	held := memInUse()
	t.Logf("%d pre-login sockets: heap and stacks %d KiB more (%d bytes each, client side included)",
		sockets, (held-before)>>10, (held-before)/sockets)
	for i, c := range conns {
		if !closedWithin(c, time.Until(dialed[i].Add(timeout+testdevice.Wait))) {
			t.Fatalf("socket %d still open %v after it was dialed", i, time.Since(dialed[i]))
		}
		if d := time.Since(dialed[i]); d < timeout {
			t.Fatalf("socket %d closed after %v, before the connect timeout", i, d)
		}
		c.Close()
		conns[i] = nil
	}
	waitFor(t, "the timeouts to be counted", func() bool {
		h := n.Health()
		return h.Closed.ConnectTimeout == sockets && h.PreLogin == 0
	})
	t.Logf("after they are closed: heap and stacks %d KiB more than before", (int64(memInUse())-int64(before))>>10)
	// The listener still serves.
	v3(t, n, "alice", opts{})
}

// TestOversizeConnectClosedBeforeBody: a CONNECT whose fixed header
// announces more than MaxConnectSize is closed at once, before any of its
// body is sent; one of exactly MaxConnectSize is read and answered.
func TestOversizeConnectClosedBeforeBody(t *testing.T) {
	n := testserver.Start(t, func(c *server.Config) { c.ConnectTimeout = time.Minute })
	// Just the fixed header of a CONNECT as large as mochi's packet limit
	// allows (256 KiB with the type byte).
	c := dialIdle(t, n.MQTTAddr())
	c.Write(append([]byte{0x10}, varint(256<<10-1)...))
	if !closedWithin(c, testdevice.Wait) {
		t.Fatal("a CONNECT announcing 256 KiB is still open, waiting for its body")
	}
	if got := n.Health().Closed.ConnectTooLarge; got != 1 {
		t.Fatalf("connectTooLarge = %d, want 1", got)
	}
	// At the limit: read whole and refused for its bad token, with a CONNACK.
	at := func(size int) []byte {
		body := len(conn{clientID: "c", user: "u", pass: "x"}.bytes()) - 2 // minus a 1-byte fixed header
		return conn{clientID: "c", user: "u", pass: "x" + strings.Repeat("y", size-body)}.bytes()
	}
	for _, tc := range []struct {
		size int
		want string
	}{
		{server.DefaultMaxConnectSize, "CONNACK 0x05, closed"},
		{server.DefaultMaxConnectSize + 1, "closed"},
	} {
		pk := at(tc.size)
		if len(pk) != 1+len(varint(tc.size))+tc.size {
			t.Fatalf("built a CONNECT of %d bytes, want %d", len(pk), tc.size)
		}
		c := dialIdle(t, n.MQTTAddr())
		c.Write(pk)
		if got := outcome(c); got != tc.want {
			t.Errorf("CONNECT of %d bytes: %q, want %q", tc.size, got, tc.want)
		}
	}
}

// TestConnsPerIPCap: the sockets of one address beyond MaxConnsPerIP,
// logged in or not, MQTT or HTTP, are closed at once; closing one makes
// room again.
func TestConnsPerIPCap(t *testing.T) {
	n := testserver.Start(t, func(c *server.Config) { c.MaxConnsPerIP, c.ConnectTimeout = 3, time.Minute })
	v3(t, n, "alice", opts{})
	idle1 := dialIdle(t, n.MQTTAddr())
	dialIdle(t, n.WSAddr())
	waitFor(t, "the idle sockets to be accepted", func() bool { return n.Health().PreLogin == 2 })
	over := dialIdle(t, n.MQTTAddr())
	if !closedWithin(over, testdevice.Wait) {
		t.Fatal("a fourth socket from the same IP stayed open")
	}
	if _, err := http.Get(n.HTTPURL() + "/healthz"); err == nil {
		t.Fatal("an HTTP request over the per-IP cap was served")
	}
	if got := n.Health().Closed.IPLimit; got != 2 {
		t.Fatalf("ipLimit = %d, want 2", got)
	}
	idle1.Close()
	waitFor(t, "the closed socket to be counted out", func() bool { return n.Health().PreLogin == 1 })
	v3(t, n, "bob", opts{})
}

// TestPreLoginCap: beyond MaxPreLogin sockets without a CONNECT, new
// sockets are closed at once; logged-in devices do not count.
func TestPreLoginCap(t *testing.T) {
	n := testserver.Start(t, func(c *server.Config) { c.MaxPreLogin, c.ConnectTimeout = 2, time.Minute })
	alice := v3(t, n, "alice", opts{})
	bob := v3(t, n, "bob", opts{})
	idle1 := dialIdle(t, n.MQTTAddr())
	dialIdle(t, n.WSAddr())
	waitFor(t, "the idle sockets to be accepted", func() bool { return n.Health().PreLogin == 2 })
	if over := dialIdle(t, n.MQTTAddr()); !closedWithin(over, testdevice.Wait) {
		t.Fatal("a third socket without CONNECT stayed open")
	}
	if got := n.Health().Closed.PreLoginLimit; got != 1 {
		t.Fatalf("preLoginLimit = %d, want 1", got)
	}
	alice.Send(`{"to":"bob","data":"logged-in devices go on"}`)
	bob.Expect(protocol.InboxTopic("bob"))
	idle1.Close()
	waitFor(t, "the closed socket to be counted out", func() bool { return n.Health().PreLogin == 1 })
	v3(t, n, "carol", opts{})
}

// TestHTTPTimeouts: a request whose body never completes, and an idle
// keep-alive connection, are closed; headers over MaxHeaderBytes get 431.
func TestHTTPTimeouts(t *testing.T) {
	const limit = 500 * time.Millisecond
	n := testserver.Start(t, func(c *server.Config) {
		c.HTTP = server.HTTPLimits{ReadTimeout: limit, IdleTimeout: limit, MaxHeaderBytes: 4 << 10}
	})
	tok := n.Token("alice")
	t.Run("slow body", func(t *testing.T) {
		c := dialIdle(t, n.HTTPAddr())
		start := time.Now()
		fmt.Fprintf(c, "POST /v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Length: 1000\r\n\r\n{\"to\":", tok)
		if !closedWithin(c, testdevice.Wait) {
			t.Fatal("a request with an unfinished body is still open")
		}
		t.Logf("closed after %v", time.Since(start))
	})
	t.Run("idle keep-alive", func(t *testing.T) {
		c := dialIdle(t, n.HTTPAddr())
		fmt.Fprint(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("healthz: %v %v", resp, err)
		}
		io.Copy(io.Discard, resp.Body)
		idle := time.Now()
		c.SetReadDeadline(time.Now().Add(testdevice.Wait))
		if _, err := br.ReadByte(); !errors.Is(err, io.EOF) {
			t.Fatalf("idle keep-alive connection: %v, want EOF", err)
		}
		if d := time.Since(idle); d < limit*9/10 {
			t.Fatalf("closed after %v, before the idle timeout", d)
		}
	})
	t.Run("large header", func(t *testing.T) {
		req, _ := http.NewRequest("GET", n.HTTPURL()+"/healthz", nil)
		req.Header.Set("X-Pad", strings.Repeat("x", 64<<10))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Fatalf("64 KiB header: %d, want 431", resp.StatusCode)
		}
	})
}

// wsDial upgrades to MQTT over WebSocket at url with origin ("" for none)
// and returns the HTTP status.
func wsDial(t *testing.T, url, origin string) (*websocket.Conn, int) {
	t.Helper()
	h := http.Header{}
	if origin != "" {
		h.Set("Origin", origin)
	}
	d := websocket.Dialer{Subprotocols: []string{"mqtt"}, HandshakeTimeout: testdevice.Wait}
	ws, resp, err := d.Dial(url, h)
	if resp == nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	if ws != nil {
		t.Cleanup(func() { ws.Close() })
	}
	return ws, resp.StatusCode
}

// TestWebSocketPathsAndOrigins: upgrades only on /mqtt and /; browser
// pages only from the request's own host name, or from the listed origins.
func TestWebSocketPathsAndOrigins(t *testing.T) {
	n := testserver.Start(t)
	base := "ws://" + n.WSAddr()
	for _, tc := range []struct {
		path, origin string
		want         int
	}{
		{"/mqtt", "", 101},
		{"/", "", 101},
		{"/mqtt", "http://127.0.0.1:8080", 101}, // the demo: same host name, other port
		{"/other", "", 404},
		{"/mqtt/x", "", 404},
		{"/mqtt", "https://evil.example", 403},
		{"/mqtt", "null", 403},
	} {
		if _, got := wsDial(t, base+tc.path, tc.origin); got != tc.want {
			t.Errorf("%s with Origin %q: %d, want %d", tc.path, tc.origin, got, tc.want)
		}
	}
	listed := testserver.Start(t, func(c *server.Config) { c.WSOrigins = []string{"https://chat.example.com"} })
	base = "ws://" + listed.WSAddr() + "/mqtt"
	for _, tc := range []struct {
		origin string
		want   int
	}{
		{"https://chat.example.com", 101},
		{"HTTPS://Chat.Example.com", 101},
		{"http://chat.example.com", 403},
		{"http://127.0.0.1", 403}, // the list replaces the same-host rule
		{"", 101},
	} {
		if _, got := wsDial(t, base, tc.origin); got != tc.want {
			t.Errorf("listed origins, Origin %q: %d, want %d", tc.origin, got, tc.want)
		}
	}
}

// TestWebSocketConnectDeadline: an upgraded WebSocket that sends no CONNECT
// is closed after the connect timeout; a logged-in one outlives the
// WebSocket listener's HTTP timeouts (which equal the connect timeout).
func TestWebSocketConnectDeadline(t *testing.T) {
	const timeout = 500 * time.Millisecond
	n := testserver.Start(t, func(c *server.Config) { c.ConnectTimeout = timeout })
	bob := testdevice.ConnectV3(t, n.WSURL(), "bob", opts{Token: n.Token})
	alice := testdevice.ConnectV3(t, n.WSURL(), "alice", opts{Token: n.Token})
	ws, code := wsDial(t, n.WSURL(), "")
	if code != 101 {
		t.Fatalf("upgrade: %d", code)
	}
	start := time.Now()
	ws.SetReadDeadline(time.Now().Add(testdevice.Wait))
	_, _, err := ws.ReadMessage()
	var ne net.Error
	switch {
	case err == nil:
		t.Fatal("read a message from the server before any CONNECT")
	case errors.As(err, &ne) && ne.Timeout():
		t.Fatal("an upgraded WebSocket without CONNECT is still open")
	}
	if got := n.Health().Closed.ConnectTimeout; got != 1 {
		t.Fatalf("connectTimeout = %d, want 1", got)
	}
	// By now the logged-in devices are well past every WebSocket HTTP
	// deadline: they must still work.
	<-time.After(time.Until(start.Add(3 * timeout)))
	alice.Send(`{"to":"bob","data":"still here"}`)
	if m := bob.Expect(protocol.InboxTopic("bob")).Message(t); string(m.Data) != `"still here"` {
		t.Fatalf("got %s", m.Data)
	}
}

// TestDeviceOutlivesConnectTimeout: the CONNECT deadline ends with the
// CONNECT. A device connected longer ago than the connect timeout, over TCP
// and over WebSocket, still gets what is sent to it (the deadline once
// stayed on the socket for writes, and every delivery after it failed).
func TestDeviceOutlivesConnectTimeout(t *testing.T) {
	const timeout = 300 * time.Millisecond
	n := testserver.Start(t, func(c *server.Config) { c.ConnectTimeout = timeout })
	bob := testserver.V3(t, n, "bob", testdevice.Options{ClientID: "tcp"})
	bobWS := testdevice.ConnectV3(t, "ws://"+n.WSAddr()+"/mqtt", "bob", testdevice.Options{ClientID: "ws", Token: n.Token})
	alice := testserver.V3(t, n, "alice", testdevice.Options{ClientID: "phone"})
	connected := time.Now()
	// The condition under test is the clock passing the deadline: wait for it.
	poll.For(t, poll.Total, poll.Interval, func() error {
		if d := time.Since(connected); d < 3*timeout {
			return fmt.Errorf("only %v since the CONNECTs", d)
		}
		return nil
	})
	alice.Send(`{"to":"bob","data":"late","id":"m1"}`)
	for _, d := range []*testdevice.Device{bob, bobWS} {
		if m := d.Expect(protocol.InboxTopic("bob")).Message(t); m.ClientMsgID != "m1" {
			t.Fatalf("%s got %+v", d.ClientID, m)
		}
		if !d.Connected() {
			t.Fatalf("%s was disconnected", d.ClientID)
		}
	}
	if s := n.Health().Slow; s != 0 {
		t.Fatalf("%d connections closed as slow consumers", s)
	}
}
