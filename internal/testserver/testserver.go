// Package testserver runs a real imbridge node on loopback for tests, like
// net/http/httptest does for HTTP handlers.
package testserver

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/imbridge/imbridge/auth"
	"github.com/imbridge/imbridge/internal/poll"
	"github.com/imbridge/imbridge/internal/testdevice"
	"github.com/imbridge/imbridge/server"
)

// Secret is the token secret of every test node.
var Secret = []byte("test-secret-0123456789abcdef")

// Node is a running node with its data in a t.TempDir.
type Node struct {
	*server.Server
	t   testing.TB
	cfg server.Config
}

// Start starts a node with MQTT, WebSocket and HTTP on 127.0.0.1 ports of
// its own. edit, if given, adjusts the config first. The node is shut down at
// cleanup.
func Start(t testing.TB, edit ...func(*server.Config)) *Node {
	t.Helper()
	cfg := server.Config{
		MQTTAddr: "127.0.0.1:0", WSAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0",
		DataDir: t.TempDir(), Secret: Secret,
	}
	if os.Getenv("IMBRIDGE_TEST_LOG") != "" {
		cfg.Logger = testLogger(t)
	}
	for _, e := range edit {
		e(&cfg)
	}
	n := &Node{t: t, cfg: cfg}
	n.start()
	t.Cleanup(func() { n.Stop() })
	return n
}

func (n *Node) start() {
	n.t.Helper()
	s, err := server.New(n.cfg)
	if err != nil {
		n.t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		n.t.Fatal(err)
	}
	n.Server = s
}

// Stop shuts the node down, failing the test if that does not finish within
// 10 seconds or reports an error.
func (n *Node) Stop() {
	n.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := n.Shutdown(ctx); err != nil {
		n.t.Errorf("shutdown: %v", err)
	}
}

// Restart stops the node and starts a new one on the same data directory and
// the same ports, as a restarted mqttd would.
func (n *Node) Restart() {
	n.t.Helper()
	n.Stop()
	n.cfg.MQTTAddr, n.cfg.WSAddr, n.cfg.HTTPAddr = n.MQTTAddr(), n.WSAddr(), n.HTTPAddr()
	n.start()
}

// DataDir returns the node's data directory.
func (n *Node) DataDir() string { return n.cfg.DataDir }

// Token mints a user token valid for an hour.
func (n *Node) Token(user string) string {
	n.t.Helper()
	tok, err := auth.Mint(Secret, user, time.Hour)
	if err != nil {
		n.t.Fatal(err)
	}
	return tok
}

// AdminToken mints an admin token valid for an hour.
func (n *Node) AdminToken() string {
	n.t.Helper()
	tok, err := auth.MintAdmin(Secret, "tests", time.Hour)
	if err != nil {
		n.t.Fatal(err)
	}
	return tok
}

// MQTTURL returns "tcp://ADDR" of the MQTT listener.
func (n *Node) MQTTURL() string { return "tcp://" + n.MQTTAddr() }

// WSURL returns "ws://ADDR/mqtt" of the WebSocket listener.
func (n *Node) WSURL() string { return "ws://" + n.WSAddr() + "/mqtt" }

// HTTPURL returns "http://ADDR" of the HTTP listener.
func (n *Node) HTTPURL() string { return fmt.Sprintf("http://%s", n.HTTPAddr()) }

// WaitClients waits until exactly n devices are connected as the server sees
// it (a device's Close returns before the server has read its DISCONNECT).
func (n *Node) WaitClients(want int64) {
	n.t.Helper()
	poll.For(n.t, poll.Total, poll.Interval, func() error {
		if got := n.Health().Clients; got != want {
			return fmt.Errorf("%d clients connected, want %d", got, want)
		}
		return nil
	})
}

// V3 connects an MQTT 3.1.1 test device of user to node n, with a token
// from n, and subscribes it; it fails the test on any error.
func V3(t testing.TB, n *Node, user string, o testdevice.Options) *testdevice.Device {
	t.Helper()
	o.Token = n.Token
	return testdevice.ConnectV3(t, n.MQTTURL(), user, o)
}

// V5 is V3 for an MQTT 5 device.
func V5(t testing.TB, n *Node, user string, o testdevice.Options) *testdevice.Device {
	t.Helper()
	o.Token = n.Token
	return testdevice.ConnectV5(t, n.MQTTAddr(), user, o)
}
