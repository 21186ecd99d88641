// Package node tests chat.mjs, the MQTT.js example, against a real node:
// proof that a Node.js client needs nothing of imbridge's.
package node

import (
	"bufio"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/imbridge/imbridge/internal/needs"
	"github.com/imbridge/imbridge/internal/testserver"
)

// peer is one running chat.mjs.
type peer struct {
	t      *testing.T
	stdin  io.WriteCloser
	events chan map[string]any
	held   []map[string]any // events of other kinds that came first
}

func start(t *testing.T, n *testserver.Node, url, version, user, other string) *peer {
	t.Helper()
	cmd := exec.Command("node", "chat.mjs", "--url", url, "--mqtt", version, "--user", user, "--peer", other, "--token", n.Token(user))
	cmd.Stderr = os.Stderr
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); cmd.Process.Kill(); cmd.Wait() })
	p := &peer{t: t, stdin: stdin, events: make(chan map[string]any, 100)}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var ev map[string]any
			if json.Unmarshal(sc.Bytes(), &ev) == nil {
				p.events <- ev
			}
		}
	}()
	p.expect("ready")
	return p
}

func (p *peer) do(line string) { p.stdin.Write([]byte(line + "\n")) }

// expect returns the next event of the given kind. Events of other kinds
// that come first are held for later: a receipt and the sender's own copy of
// the message travel on different topics, in no set order.
func (p *peer) expect(event string) map[string]any {
	p.t.Helper()
	for i, ev := range p.held {
		if ev["event"] == event {
			p.held = append(p.held[:i], p.held[i+1:]...)
			return ev
		}
	}
	deadline := time.After(10 * time.Second)
	for {
		select {
		case ev := <-p.events:
			if ev["event"] == event {
				return ev
			}
			p.held = append(p.held, ev)
		case <-deadline:
			p.t.Fatalf("no %s event (holding %v)", event, p.held)
			return nil
		}
	}
}

// TestMQTTjs: alice on MQTT 5 over TCP and bob on MQTT 3.1.1 over WebSocket
// exchange both kinds of message with MQTT.js.
func TestMQTTjs(t *testing.T) {
	needs.Tool(t, "Debian: apt-get install nodejs npm", "node")
	needs.File(t, "run npm ci in examples/node", "node_modules/mqtt/package.json")
	n := testserver.Start(t)
	bob := start(t, n, n.WSURL(), "4", "bob", "alice")
	alice := start(t, n, n.MQTTURL(), "5", "alice", "bob")

	alice.do("type")
	if r := alice.expect("receipt"); r["status"] != "delivered" {
		t.Fatalf("typing receipt %v", r)
	}
	if m := bob.expect("message"); m["onlineUserOnly"] != true || m["from"] != "alice" {
		t.Fatalf("bob got %v", m)
	}

	alice.do("send hello from node")
	if r := alice.expect("receipt"); r["status"] != "stored" || r["seq"] != 1.0 {
		t.Fatalf("send receipt %v", r)
	}
	alice.expect("message") // her own copy
	m := bob.expect("message")
	if m["onlineUserOnly"] != false || m["seq"] != 1.0 || m["data"].(map[string]any)["text"] != "hello from node" {
		t.Fatalf("bob got %v", m)
	}

	bob.do("history")
	h := bob.expect("history")
	if msgs := h["messages"].([]any); len(msgs) != 1 {
		t.Fatalf("history %v", h)
	}
}
