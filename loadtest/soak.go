package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/imbridge/imbridge/protocol"
)

// soakSample is one reading of the server during a soak.
type soakSample struct {
	at         time.Duration
	restarts   int
	rss, heap  int64
	goroutines int
	clients    int64
	acked      int64
}

// soakResult is what a soak found.
type soakResult struct {
	samples          []soakSample
	acked, stored    int
	lost             []string
	online, restarts int
}

// freeAddr returns a free loopback address.
func freeAddr() string {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	defer ln.Close()
	return ln.Addr().String()
}

// soak runs an imbridge node for d with idle devices and active pairs
// sending stored (with ids, acknowledged ones recorded) and online-only
// messages, restarts it gracefully every restartEvery on the same data dir
// and addresses, samples its memory and goroutines, and at the end checks
// that every acknowledged stored message is in the history.
func soak(d time.Duration, idle, pairs int, restartEvery time.Duration, progress func(string, ...any)) (soakResult, error) {
	var res soakResult
	dir, err := os.MkdirTemp("", "loadtest-soak")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	secret := []byte("loadtest-secret-0123456789")
	addrs := freeAddr() + " " + freeAddr()
	t, err := startTarget(kindBridge, dir, secret, envAddrs+"="+addrs)
	if err != nil {
		return res, err
	}
	defer func() { t.stop() }()
	w := wire{t}

	// Idle devices: raw connections, dialled again after each restart.
	var idleMu sync.Mutex
	idleConns := make([]net.Conn, idle)
	dialIdle := func() {
		var wg sync.WaitGroup
		var next atomic.Int64
		for range 32 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := int(next.Add(1)) - 1; i < idle; i = int(next.Add(1)) - 1 {
					user := fmt.Sprintf("idle%d", i)
					for try := 0; try < 50; try++ {
						if c, err := w.rawDial(user, user, w.filter(user, false), w.filter(user, true)); err == nil {
							idleMu.Lock()
							idleConns[i] = c
							idleMu.Unlock()
							break
						}
						time.Sleep(100 * time.Millisecond) // the server is starting again
					}
				}
			}()
		}
		wg.Wait()
	}
	dialIdle()

	// Active pairs: paho devices that reconnect on their own.
	var acked sync.Map // client id -> sender
	var nAcked, nOnline atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	// connect returns a device that reconnects on its own, and a counter of
	// its lost connections. paho v1.5.1 completes a QoS 1 publish token as a
	// success, without any PUBACK, when it resends the message after a
	// reconnect (messageIds.claimID calls flowComplete on the old token); so
	// a send only counts as acknowledged if no reconnect came in between.
	connect := func(user string) (paho.Client, *atomic.Int64) {
		lost := new(atomic.Int64)
		c := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + t.MQTT).SetClientID(user).SetUsername(user).
			SetPassword(w.password(user)).SetCleanSession(true).SetAutoReconnect(true).SetConnectRetry(true).
			SetConnectRetryInterval(200 * time.Millisecond).SetMaxReconnectInterval(time.Second).
			SetConnectionLostHandler(func(paho.Client, error) { lost.Add(1) }))
		c.Connect().WaitTimeout(10 * time.Second)
		return c, lost
	}
	for i := range pairs {
		recv, _ := connect(fmt.Sprintf("r%d", i))
		recv.Subscribe(w.filter(fmt.Sprintf("r%d", i), false), 1, func(paho.Client, paho.Message) {})
		recv.Subscribe(w.filter(fmt.Sprintf("r%d", i), true), 0, func(paho.Client, paho.Message) {})
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer recv.Disconnect(0)
			from, to := fmt.Sprintf("s%d", i), fmt.Sprintf("r%d", i)
			c, lost := connect(from)
			defer c.Disconnect(0)
			tick := time.NewTicker(50 * time.Millisecond)
			defer tick.Stop()
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				if n%3 == 0 {
					if tok := c.Publish(protocol.SendTopic(from), 0, false, fmt.Sprintf(`{"to":%q,"onlineUserOnly":true,"data":{"command":"textInput"}}`, to)); tok.WaitTimeout(time.Second) {
						nOnline.Add(1)
					}
					continue
				}
				id := fmt.Sprintf("%s-%d", from, n)
				before := lost.Load()
				tok := c.Publish(protocol.SendTopic(from), 1, false, fmt.Sprintf(`{"to":%q,"id":%q,"data":%d}`, to, id, n))
				if tok.WaitTimeout(2*time.Second) && tok.Error() == nil && lost.Load() == before {
					acked.Store(id, from)
					nAcked.Add(1)
				}
			}
		}()
	}

	start := time.Now()
	sample := func() {
		st, err := t.stats(true)
		if err != nil {
			return
		}
		s := soakSample{at: time.Since(start).Round(time.Second), restarts: res.restarts, rss: st.RSS, heap: st.Heap,
			goroutines: st.Goroutines, clients: st.Clients, acked: nAcked.Load()}
		res.samples = append(res.samples, s)
		progress("soak %v: rss %d MB, heap %d MB, %d goroutines, %d clients, %d acked", s.at, s.rss>>20, s.heap>>20, s.goroutines, s.clients, s.acked)
	}
	sampleTick := time.NewTicker(15 * time.Second)
	defer sampleTick.Stop()
	restartTick := time.NewTicker(restartEvery)
	defer restartTick.Stop()
	end := time.After(d)
loop:
	for {
		select {
		case <-sampleTick.C:
			sample()
		case <-restartTick.C:
			sample()
			progress("soak: restarting the server (graceful)")
			t.stop()
			idleMu.Lock()
			for _, c := range idleConns {
				if c != nil {
					c.Close()
				}
			}
			idleMu.Unlock()
			if t, err = startTarget(kindBridge, dir, secret, envAddrs+"="+addrs); err != nil {
				close(stop)
				wg.Wait()
				return res, err
			}
			w = wire{t}
			res.restarts++
			dialIdle()
		case <-end:
			break loop
		}
	}
	close(stop)
	wg.Wait()
	sample()
	idleMu.Lock()
	for _, c := range idleConns {
		if c != nil {
			c.Close()
		}
	}
	idleMu.Unlock()

	// Every acknowledged stored message must be in the history.
	seen := map[string]bool{}
	for i := range pairs {
		path := fmt.Sprintf("/v1/history?with=s%d&limit=1000", i)
		for {
			var page protocol.Page
			req, _ := http.NewRequest("GET", "http://"+t.HTTP+path, nil)
			req.Header.Set("Authorization", "Bearer "+w.password(fmt.Sprintf("r%d", i)))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return res, err
			}
			err = json.NewDecoder(resp.Body).Decode(&page)
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if err != nil {
				return res, err
			}
			for _, m := range page.Messages {
				seen[m.ClientMsgID] = true
			}
			if !page.More {
				break
			}
			path = fmt.Sprintf("/v1/history?with=s%d&limit=1000&before=%d", i, page.NextBefore)
		}
	}
	acked.Range(func(k, _ any) bool {
		res.acked++
		if !seen[k.(string)] {
			res.lost = append(res.lost, k.(string))
		}
		return true
	})
	res.stored, res.online = len(seen), int(nOnline.Load())
	return res, nil
}
