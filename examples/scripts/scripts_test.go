// Package scripts tests the shell scripts beside it against a real node.
package scripts

import (
	"bufio"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/imbridge/imbridge/internal/needs"
	"github.com/imbridge/imbridge/internal/poll"
	"github.com/imbridge/imbridge/internal/testserver"
	"github.com/imbridge/imbridge/protocol"
)

func script(t *testing.T, n *testserver.Node, env []string, name string, args ...string) *exec.Cmd {
	host, port, _ := strings.Cut(n.MQTTAddr(), ":")
	cmd := exec.Command("sh", append([]string{name}, args...)...)
	cmd.Env = append(os.Environ(), append([]string{"HOST=" + host, "PORT=" + port, "HTTP=" + n.HTTPURL()}, env...)...)
	cmd.Stderr = os.Stderr
	return cmd
}

func receipt(t *testing.T, out []byte) protocol.Receipt {
	t.Helper()
	var r protocol.Receipt
	if err := json.Unmarshal(out, &r); err != nil || r.Type != "receipt" {
		t.Fatalf("not a receipt: %v: %s", err, out)
	}
	return r
}

// TestScripts: watch.sh sees what send.sh and curl-send.sh send, of both
// kinds, and the senders print their receipts.
func TestScripts(t *testing.T) {
	for _, tool := range []string{"mosquitto_sub", "mosquitto_rr", "curl"} {
		needs.Tool(t, "Debian: apt-get install mosquitto-clients curl", tool)
	}
	n := testserver.Start(t)

	watch := script(t, n, []string{"TOKEN=" + n.Token("bob")}, "watch.sh", "bob")
	out, _ := watch.StdoutPipe()
	if err := watch.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { watch.Process.Kill(); watch.Wait() })
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	poll.For(t, poll.Total, poll.Interval, func() error {
		if n.Health().Clients == 0 {
			return errors.New("watch.sh did not connect")
		}
		return nil
	})
	expect := func(prefix, data string) {
		t.Helper()
		select {
		case l := <-lines:
			if !strings.HasPrefix(l, prefix) || !strings.Contains(l, data) {
				t.Fatalf("watch.sh printed %q, want %s ... %s", l, prefix, data)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("watch.sh printed nothing for %s", prefix)
		}
	}

	b, err := script(t, n, []string{"TOKEN=" + n.Token("alice")}, "send.sh", "alice", "bob", "hello from sh").Output()
	if err != nil {
		t.Fatal(err)
	}
	if r := receipt(t, b); r.Status != protocol.StatusStored || r.Seq != 1 {
		t.Fatalf("send.sh receipt %+v", r)
	}
	expect("users/bob/inbox ", `"hello from sh"`)

	b, err = script(t, n, []string{"TOKEN=" + n.Token("alice"), "ONLINE=1"}, "send.sh", "alice", "bob").Output()
	if err != nil {
		t.Fatal(err)
	}
	if r := receipt(t, b); r.Status != protocol.StatusDelivered {
		t.Fatalf("send.sh online receipt %+v", r)
	}
	expect("users/bob/online ", `"textInput"`)

	b, err = script(t, n, []string{"TOKEN=" + n.AdminToken()}, "curl-send.sh", "carol", "bob", "hello from curl").Output()
	if err != nil {
		t.Fatal(err)
	}
	if r := receipt(t, b); r.Status != protocol.StatusStored {
		t.Fatalf("curl-send.sh receipt %+v", r)
	}
	expect("users/bob/inbox ", `"hello from curl"`)
}
