package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/imbridge/imbridge/auth"
	"github.com/imbridge/imbridge/internal/testdevice"
	"github.com/imbridge/imbridge/protocol"
	"github.com/imbridge/imbridge/storage"
)

const crashSecret = "crash-test-secret-0123456789"

func crashEnv(data string) []string {
	// No send rate: the senders go as fast as they can.
	return []string{"MQTTD_MQTT=127.0.0.1:0", "MQTTD_WS=", "MQTTD_HTTP=127.0.0.1:0", "MQTTD_DATA=" + data, "MQTTD_SECRET=" + crashSecret,
		"MQTTD_SEND_RATE=-1"}
}

func mint(t *testing.T, user string, admin bool) string {
	t.Helper()
	var tok string
	var err error
	if admin {
		tok, err = auth.MintAdmin([]byte(crashSecret), user, time.Hour)
	} else {
		tok, err = auth.Mint([]byte(crashSecret), user, time.Hour)
	}
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// acked collects the client ids of sends whose PUBACK or HTTP 2xx came back.
type acked struct {
	mu      sync.Mutex        // guards ids and waiters
	ids     map[string]string // client id -> sender
	waiters []ackWaiter       // closed once ids holds n entries
}

type ackWaiter struct {
	n  int
	ch chan struct{}
}

func newAcked() *acked { return &acked{ids: map[string]string{}} }

func (a *acked) add(id, from string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.ids[id] = from
	kept := a.waiters[:0]
	for _, w := range a.waiters {
		if len(a.ids) >= w.n {
			close(w.ch)
		} else {
			kept = append(kept, w)
		}
	}
	a.waiters = kept
}

// count returns the number of acknowledged sends so far.
func (a *acked) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.ids)
}

// reached returns a channel closed once n sends in all have been
// acknowledged.
func (a *acked) reached(n int) <-chan struct{} {
	a.mu.Lock()
	defer a.mu.Unlock()
	ch := make(chan struct{})
	if len(a.ids) >= n {
		close(ch)
	} else {
		a.waiters = append(a.waiters, ackWaiter{n, ch})
	}
	return ch
}

// waitFor waits until n sends in all have been acknowledged, failing the
// test after testdevice.Wait.
func (a *acked) waitFor(t *testing.T, n int) {
	t.Helper()
	select {
	case <-a.reached(n):
	case <-time.After(testdevice.Wait):
		t.Fatalf("%d sends acknowledged in %v, want %d: the load did not run", a.count(), testdevice.Wait, n)
	}
}

// load sends until the server dies: MQTT senders (QoS 1, waiting for each
// PUBACK) and HTTP senders, all to "sink". It returns when every sender has
// stopped on an error. The client IDs and message ids carry round, so that
// loads of different rounds may run at once (on the nodes of a cluster).
func load(t *testing.T, p *proc, round int, a *acked) {
	var wg sync.WaitGroup
	for s := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			user := fmt.Sprintf("m%d", s)
			c := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + p.mqtt).SetClientID(fmt.Sprintf("%s-r%d", user, round)).
				SetUsername(user).SetPassword(mint(t, user, false)).SetAutoReconnect(false).SetConnectTimeout(5 * time.Second))
			if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
				return
			}
			defer c.Disconnect(0)
			for i := 0; ; i++ {
				id := fmt.Sprintf("r%d-%s-%d", round, user, i)
				tok := c.Publish(protocol.SendTopic(user), 1, false, fmt.Sprintf(`{"to":"sink","id":%q,"data":%d}`, id, i))
				if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil || !c.IsConnectionOpen() {
					return
				}
				a.add(id, user)
			}
		}()
	}
	for s := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			user := fmt.Sprintf("h%d", s)
			admin := mint(t, "ops", true)
			client := &http.Client{Timeout: 5 * time.Second}
			for i := 0; ; i++ {
				id := fmt.Sprintf("r%d-%s-%d", round, user, i)
				req, _ := http.NewRequest("POST", "http://"+p.web+"/v1/messages",
					strings.NewReader(fmt.Sprintf(`{"from":%q,"to":"sink","id":%q,"data":%d}`, user, id, i)))
				req.Header.Set("Authorization", "Bearer "+admin)
				resp, err := client.Do(req)
				if err != nil {
					return
				}
				resp.Body.Close()
				if resp.StatusCode != 200 {
					return
				}
				a.add(id, user)
			}
		}()
	}
	wg.Wait()
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *proc) kill(t *testing.T) {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGKILL)
	p.cmd.Wait()
}

// checkHistory reads every conversation with sink and checks that each acked
// id is there exactly once and that seqs and inboxSeqs have no holes.
func checkHistory(t *testing.T, p *proc, a *acked) (messages int) {
	t.Helper()
	seen := map[string]int{}
	get := func(path string) protocol.Page {
		req, _ := http.NewRequest("GET", "http://"+p.web+path, nil)
		req.Header.Set("Authorization", "Bearer "+mint(t, "sink", false))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var page protocol.Page
		if err := json.NewDecoder(resp.Body).Decode(&page); err != nil || resp.StatusCode != 200 {
			t.Fatalf("GET %s: %d %v", path, resp.StatusCode, err)
		}
		return page
	}
	for _, sender := range []string{"m0", "m1", "m2", "h0", "h1"} {
		// Page backwards from the newest, as a device scrolling up would.
		var seqs []uint64
		path := fmt.Sprintf("/v1/history?with=%s&limit=1000", sender)
		for {
			page := get(path)
			for i := len(page.Messages) - 1; i >= 0; i-- {
				seqs = append(seqs, page.Messages[i].Seq)
				seen[page.Messages[i].ClientMsgID]++
			}
			if !page.More {
				break
			}
			path = fmt.Sprintf("/v1/history?with=%s&limit=1000&before=%d", sender, page.NextBefore)
		}
		for i, seq := range seqs { // newest first: n, n-1, ..., 1
			if seq != uint64(len(seqs)-i) {
				t.Fatalf("conversation %s|sink: seqs %v have a hole or a repeat", sender, seqs)
			}
		}
	}
	var inbox uint64
	for {
		page := get(fmt.Sprintf("/v1/sync?after=%d&limit=1000", inbox))
		for _, m := range page.Messages {
			if m.InboxSeq != inbox+1 {
				t.Fatalf("sink's inbox: inboxSeq %d after %d", m.InboxSeq, inbox)
			}
			inbox = m.InboxSeq
		}
		if !page.More {
			break
		}
	}
	for id, n := range seen {
		if n != 1 {
			t.Fatalf("message %s stored %d times", id, n)
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for id := range a.ids {
		if seen[id] != 1 {
			t.Fatalf("acknowledged message %s is not in the history", id)
		}
	}
	if int(inbox) != len(seen) {
		t.Fatalf("sink's inbox has %d entries, conversations %d messages", inbox, len(seen))
	}
	return len(seen)
}

// TestKill9 kills mqttd with SIGKILL at random moments under concurrent MQTT
// and HTTP senders, many times, restarting on the same data directory.
// Every acknowledged message must survive exactly once, seqs must have no
// holes, and the bbolt file must pass its consistency check after each kill.
// IMBRIDGE_KILLS sets the number of kills (default 8).
func TestKill9(t *testing.T) {
	kills := 8
	if v, err := strconv.Atoi(os.Getenv("IMBRIDGE_KILLS")); err == nil && v > 0 {
		kills = v
	}
	data := t.TempDir()
	a := newAcked()
	for round := range kills {
		p := start(t, crashEnv(data))
		done := make(chan struct{})
		go func() { load(t, p, round, a); close(done) }()
		// A random moment to kill at: after 1 to 400 more acknowledgements
		// (some 300 come in the 100-500 ms the load ran before).
		a.waitFor(t, a.count()+1+rand.IntN(400))
		p.kill(t)
		<-done
		if err := storage.Verify(filepath.Join(data, "history.db"), time.Second); err != nil {
			t.Fatalf("after kill %d: %v", round+1, err)
		}
	}
	p := start(t, crashEnv(data))
	n := checkHistory(t, p, a)
	p.stop(t)
	t.Logf("survived %d kills: %d messages stored, %d of them acknowledged before a kill", kills, n, a.count())
	if a.count() < kills {
		t.Fatalf("only %d acknowledged sends: the load did not run", a.count())
	}
}

// TestSIGTERMLosesNothing stops mqttd gracefully under load: everything
// acknowledged is stored and the file is closed cleanly.
func TestSIGTERMLosesNothing(t *testing.T) {
	data := t.TempDir()
	a := newAcked()
	p := start(t, crashEnv(data))
	done := make(chan struct{})
	go func() { load(t, p, 0, a); close(done) }()
	a.waitFor(t, 300) // the load runs: MQTT and HTTP sends are in flight
	p.stop(t)         // SIGTERM; fails the test unless it exits 0
	<-done
	if err := storage.Verify(filepath.Join(data, "history.db"), time.Second); err != nil {
		t.Fatal(err)
	}
	p = start(t, crashEnv(data))
	n := checkHistory(t, p, a)
	p.stop(t)
	t.Logf("%d messages stored, %d of them acknowledged before SIGTERM", n, a.count())
	if a.count() < 300 {
		t.Fatalf("only %d acknowledged sends: the load did not run", a.count())
	}
}

// startFails runs mqttd expecting it to exit with an error mentioning want.
func startFails(t *testing.T, env []string, want string) {
	t.Helper()
	cmd := exec.Command(binary)
	cmd.Env = append(os.Environ(), env...)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	cmd = exec.CommandContext(ctx, binary)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("mqttd did not exit (hung): %s", out)
	}
	if err == nil || !strings.Contains(string(out), want) {
		t.Fatalf("mqttd: %v, output %q; want an error mentioning %q", err, out, want)
	}
}

// TestBadDataDir: a data dir held by another mqttd, a corrupted file and a
// foreign bbolt file each stop mqttd at start with a clear message.
func TestBadDataDir(t *testing.T) {
	data := t.TempDir()
	p := start(t, crashEnv(data))
	startFails(t, crashEnv(data), "locked by another process")
	p.stop(t)

	garbage := t.TempDir()
	os.WriteFile(filepath.Join(garbage, "history.db"), []byte(strings.Repeat("not a database ", 1000)), 0o600)
	startFails(t, crashEnv(garbage), "history.db")

	foreign := t.TempDir()
	db := exec.Command("go", "run", "./testdata/foreigndb", filepath.Join(foreign, "history.db"))
	if out, err := db.CombinedOutput(); err != nil {
		t.Fatalf("make a foreign bbolt file: %v %s", err, out)
	}
	startFails(t, crashEnv(foreign), "not an imbridge history")
}
