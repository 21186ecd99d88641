package interop

import (
	"bufio"
	"encoding/json"
	"fmt"
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

// sub is a running mosquitto_sub, printing "TOPIC PAYLOAD" lines.
type sub struct {
	t     *testing.T
	lines chan string
}

func mosquittoSub(t *testing.T, n *testserver.Node, version, user, id string) *sub {
	t.Helper()
	host, port, _ := strings.Cut(n.MQTTAddr(), ":")
	cmd := exec.Command("mosquitto_sub", "-V", version, "-h", host, "-p", port, "-i", id, "-u", user, "-P", n.Token(user),
		"-q", "1", "-v", "-t", protocol.InboxTopic(user), "-t", protocol.OnlineFilter(user))
	cmd.Stderr = os.Stderr
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	s := &sub{t: t, lines: make(chan string, 100)}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			s.lines <- sc.Text()
		}
	}()
	return s
}

// next returns the next line's topic and message.
func (s *sub) next() (string, protocol.Message) {
	s.t.Helper()
	select {
	case l := <-s.lines:
		topic, payload, _ := strings.Cut(l, " ")
		var m protocol.Message
		if err := json.Unmarshal([]byte(payload), &m); err != nil {
			s.t.Fatalf("mosquitto_sub printed %q: %v", l, err)
		}
		return topic, m
	case <-time.After(10 * time.Second):
		s.t.Fatal("mosquitto_sub printed nothing")
	}
	return "", protocol.Message{}
}

func mosquittoPub(t *testing.T, n *testserver.Node, version, user, payload string) {
	t.Helper()
	host, port, _ := strings.Cut(n.MQTTAddr(), ":")
	out, err := exec.Command("mosquitto_pub", "-V", version, "-h", host, "-p", port, "-u", user, "-P", n.Token(user),
		"-q", "1", "-t", protocol.SendTopic(user), "-m", payload).CombinedOutput()
	if err != nil {
		t.Fatalf("mosquitto_pub: %v: %s", err, out)
	}
}

// TestMosquitto: with two mosquitto_sub devices of bob on the shared online
// subscription, a stored message reaches both and an online-only one exactly
// one, for MQTT 3.1.1 and 5.
func TestMosquitto(t *testing.T) {
	for _, tool := range []string{"mosquitto_sub", "mosquitto_pub"} {
		needs.Tool(t, "Debian: apt-get install mosquitto-clients", tool)
	}
	for _, version := range []string{"mqttv311", "mqttv5"} {
		t.Run(version, func(t *testing.T) {
			n := testserver.Start(t)
			phone := mosquittoSub(t, n, version, "bob", "phone")
			laptop := mosquittoSub(t, n, version, "bob", "laptop")
			poll.For(t, poll.Total, poll.Interval, func() error {
				if h := n.Health(); h.Subs < 4 { // both have subscribed to both filters
					return fmt.Errorf("mosquitto_sub did not subscribe: %+v", h)
				}
				return nil
			})
			// A stored message proves both subscriptions are in place.
			mosquittoPub(t, n, version, "alice", `{"to":"bob","data":"stored"}`)
			for _, s := range []*sub{phone, laptop} {
				if topic, m := s.next(); topic != protocol.InboxTopic("bob") || string(m.Data) != `"stored"` || m.Seq != 1 {
					t.Fatalf("got %s %+v", topic, m)
				}
			}
			const k = 6
			for i := range k {
				mosquittoPub(t, n, version, "alice", `{"to":"bob","onlineUserOnly":true,"data":{"command":"textInput","i":`+string(rune('0'+i))+`}}`)
			}
			// Every indicator went to exactly one device: k lines in all.
			mosquittoPub(t, n, version, "alice", `{"to":"bob","data":"end"}`)
			online := 0
			for _, s := range []*sub{phone, laptop} {
				for {
					topic, m := s.next()
					if topic == protocol.InboxTopic("bob") && string(m.Data) == `"end"` {
						break
					}
					if topic != protocol.OnlineTopic("bob") || !m.OnlineUserOnly {
						t.Fatalf("got %s %+v", topic, m)
					}
					online++
				}
			}
			if online != k {
				t.Fatalf("%d online-only deliveries for %d sends, want exactly one each", online, k)
			}
			if got := n.Health().Bridge.Delivered; got != k {
				t.Fatalf("delivered = %d, want %d", got, k)
			}
		})
	}
}

// TestReadmeWalkthrough runs the README's "Five minutes with mosquitto"
// with its own commands (plus -h and -p): bob's mosquitto_sub gets the
// typing indicator and the stored message; once it is gone, the typing
// indicator sent with mosquitto_rr prints a receipt saying offline.
func TestReadmeWalkthrough(t *testing.T) {
	for _, tool := range []string{"mosquitto_sub", "mosquitto_pub", "mosquitto_rr"} {
		needs.Tool(t, "Debian: apt-get install mosquitto-clients", tool)
	}
	n := testserver.Start(t)
	host, port, _ := strings.Cut(n.MQTTAddr(), ":")
	alice, bob := n.Token("alice"), n.Token("bob")
	at := []string{"-h", host, "-p", port}
	rr := func(payload string) protocol.Receipt {
		t.Helper()
		out, err := exec.Command("mosquitto_rr", append(at, "-V", "5", "-u", "alice", "-P", alice, "-q", "1",
			"-t", "users/alice/send", "-e", "users/alice/reply/me", "-W", "10", "-m", payload)...).Output()
		var r protocol.Receipt
		if err != nil || json.Unmarshal(out, &r) != nil || r.Type != "receipt" {
			t.Fatalf("mosquitto_rr printed %q: %v", out, err)
		}
		return r
	}

	bobSub := exec.Command("mosquitto_sub", append(at, "-u", "bob", "-P", bob, "-q", "1", "-v",
		"-t", "users/bob/inbox", "-t", "$share/bob/users/bob/online")...)
	out, _ := bobSub.StdoutPipe()
	if err := bobSub.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bobSub.Process.Kill(); bobSub.Wait() })
	s := &sub{t: t, lines: make(chan string, 100)}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			s.lines <- sc.Text()
		}
	}()
	poll.For(t, poll.Total, poll.Interval, func() error {
		if h := n.Health(); h.Subs < 2 {
			return fmt.Errorf("mosquitto_sub did not subscribe: %+v", h)
		}
		return nil
	})

	typing := `{"to":"bob","onlineUserOnly":true,"data":{"command":"textInput"}}`
	if b, err := exec.Command("mosquitto_pub", append(at, "-u", "alice", "-P", alice, "-t", "users/alice/send", "-m", typing)...).CombinedOutput(); err != nil || len(b) != 0 {
		t.Fatalf("mosquitto_pub: %v %q", err, b)
	}
	if topic, m := s.next(); topic != "users/bob/online" || m.From != "alice" {
		t.Fatalf("bob got %s %+v", topic, m)
	}
	if r := rr(`{"to":"bob","data":{"text":"hi bob"},"id":"m1"}`); r.Status != protocol.StatusStored || r.ID != "m1" || r.Seq != 1 {
		t.Fatalf("stored receipt %+v", r)
	}
	if topic, m := s.next(); topic != "users/bob/inbox" || m.Seq != 1 || m.InboxSeq != 1 {
		t.Fatalf("bob got %s %+v", topic, m)
	}

	bobSub.Process.Kill() // "Stop bob's mosquitto_sub"
	bobSub.Wait()
	n.WaitClients(0)
	if r := rr(typing); r.Status != protocol.StatusOffline {
		t.Fatalf("typing indicator with bob gone: receipt %+v, want offline", r)
	}
}
