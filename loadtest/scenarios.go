package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	bolt "go.etcd.io/bbolt"

	"github.com/imbridge/imbridge/protocol"
	"github.com/imbridge/imbridge/storage"
)

// sizes scales every scenario.
type sizes struct {
	duration       time.Duration // of each timed run
	latencyPairs   int
	latencyRate    int // messages per second, all pairs together
	tputPairs      int
	storedSenders  []int
	historyMsgs    int
	historyQueries int
	devices        int
	fanoutMsgs     int
	pickMsgs       int
}

var (
	fullSizes = sizes{duration: 5 * time.Second, latencyPairs: 50, latencyRate: 5000, tputPairs: 10,
		storedSenders: []int{1, 16}, historyMsgs: 1_000_000, historyQueries: 2000, devices: 10_000, fanoutMsgs: 2000, pickMsgs: 1000}
	quickSizes = sizes{duration: time.Second, latencyPairs: 10, latencyRate: 1000, tputPairs: 4,
		storedSenders: []int{1, 8}, historyMsgs: 20_000, historyQueries: 200, devices: 300, fanoutMsgs: 200, pickMsgs: 200}
)

// devices connects n paho devices named prefix0..prefixN-1 with the given
// filter per user and handler; all are disconnected by the returned func.
func (w wire) devices(prefix string, n int, online bool, h paho.MessageHandler) ([]paho.Client, func(), error) {
	var cs []paho.Client
	closeAll := func() {
		for _, c := range cs {
			c.Disconnect(0)
		}
	}
	for i := range n {
		user := fmt.Sprintf("%s%d", prefix, i)
		var filters map[string]byte
		if h != nil {
			qos := byte(1)
			if online {
				qos = 0
			}
			filters = map[string]byte{w.filter(user, online): qos}
		}
		c, err := w.dial(user, user+"-dev", true, filters, h)
		if err != nil {
			closeAll()
			return nil, nil, err
		}
		cs = append(cs, c)
	}
	return cs, closeAll, nil
}

// pairs connects n receivers r0..rN-1, whose handler gets their online or
// inbox messages, and n senders s0..sN-1; stop disconnects them all.
func (w wire) pairs(n int, online bool, h paho.MessageHandler) (senders []paho.Client, stop func(), err error) {
	_, closeR, err := w.devices("r", n, online, h)
	if err != nil {
		return nil, nil, err
	}
	senders, closeS, err := w.devices("s", n, online, nil)
	if err != nil {
		closeR()
		return nil, nil, err
	}
	return senders, func() { closeS(); closeR() }, nil
}

// onlineLatency sends online-only messages between pairs at a paced total
// rate and records the one-way latency of each delivery.
func onlineLatency(w wire, s sizes) (*latencies, int64, error) {
	return onlineLatencyAcross(w, w, s, nil)
}

// onlineLatencyAcross is onlineLatency with the senders on ws and the
// receivers on wr; ready, if set, is called once all are connected and
// returns when the receivers can be reached.
func onlineLatencyAcross(ws, wr wire, s sizes, ready func(receivers []string) error) (*latencies, int64, error) {
	lat := &latencies{}
	_, stopR, err := wr.devices("r", s.latencyPairs, true, func(_ paho.Client, m paho.Message) { lat.record(m.Payload()) })
	if err != nil {
		return nil, 0, err
	}
	defer stopR()
	senders, stopS, err := ws.devices("s", s.latencyPairs, true, nil)
	if err != nil {
		return nil, 0, err
	}
	defer stopS()
	if ready != nil {
		var users []string
		for i := range s.latencyPairs {
			users = append(users, fmt.Sprintf("r%d", i))
		}
		if err := ready(users); err != nil {
			return nil, 0, err
		}
	}
	var sent atomic.Int64
	interval := time.Duration(float64(time.Second) * float64(s.latencyPairs) / float64(s.latencyRate))
	deadline := time.Now().Add(s.duration)
	var wg sync.WaitGroup
	for i, c := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			to, from := fmt.Sprintf("r%d", i), fmt.Sprintf("s%d", i)
			tick := time.NewTicker(interval)
			defer tick.Stop()
			for now := range tick.C {
				if now.After(deadline) {
					return
				}
				c.Publish(ws.pubTopic(from, to, true), 0, false, ws.payload(to, true, ""))
				sent.Add(1)
			}
		}()
	}
	wg.Wait()
	waitCount(lat.n.Load, sent.Load(), time.Second)
	return lat, sent.Load(), nil
}

// onlineThroughput has pairs send online-only messages flat out.
func onlineThroughput(w wire, s sizes) (perSec, ratio float64, err error) {
	var got atomic.Int64
	var last atomic.Int64
	senders, stop, err := w.pairs(s.tputPairs, true, func(paho.Client, paho.Message) {
		got.Add(1)
		last.Store(time.Now().UnixNano())
	})
	if err != nil {
		return 0, 0, err
	}
	defer stop()
	var sent atomic.Int64
	start := time.Now()
	deadline := start.Add(s.duration)
	var wg sync.WaitGroup
	for i, c := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			to, from := fmt.Sprintf("r%d", i), fmt.Sprintf("s%d", i)
			topic, payload := w.pubTopic(from, to, true), w.payload(to, true, "")
			for time.Now().Before(deadline) {
				for range 100 {
					c.Publish(topic, 0, false, payload)
				}
				sent.Add(100)
			}
		}()
	}
	wg.Wait()
	waitCount(got.Load, sent.Load(), time.Second)
	elapsed := time.Duration(last.Load() - start.UnixNano())
	return float64(got.Load()) / elapsed.Seconds(), float64(got.Load()) / float64(sent.Load()), nil
}

// stored has n senders each send stored (QoS 1) messages and wait for every
// PUBACK; receivers are connected. It returns messages per second and the
// PUBACK latencies.
func stored(w wire, s sizes, n int) (float64, *latencies, error) {
	return storedAcross([]wire{w}, s, n)
}

// storedAcross is stored on the nodes of a cluster: sender i on node i mod
// k, its receiver on the next node (on one node, both there).
func storedAcross(ws []wire, s sizes, n int) (float64, *latencies, error) {
	var all, senders []paho.Client
	defer func() {
		for _, c := range all {
			c.Disconnect(0)
		}
	}()
	for i := range n {
		rw, sw := ws[(i+1)%len(ws)], ws[i%len(ws)]
		to, from := fmt.Sprintf("r%d", i), fmt.Sprintf("s%d", i)
		r, err := rw.dial(to, to+"-dev", true, map[string]byte{rw.filter(to, false): 1}, func(paho.Client, paho.Message) {})
		if err != nil {
			return 0, nil, err
		}
		all = append(all, r)
		c, err := sw.dial(from, from+"-dev", true, nil, nil)
		if err != nil {
			return 0, nil, err
		}
		all, senders = append(all, c), append(senders, c)
	}
	acks := &latencies{}
	var count atomic.Int64
	deadline := time.Now().Add(s.duration)
	start := time.Now()
	var wg sync.WaitGroup
	for i, c := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := ws[i%len(ws)]
			to, from := fmt.Sprintf("r%d", i), fmt.Sprintf("s%d", i)
			for time.Now().Before(deadline) {
				t0 := time.Now()
				tok := c.Publish(w.pubTopic(from, to, false), 1, false, w.payload(to, false, ""))
				if !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
					return
				}
				acks.add(time.Since(t0))
				count.Add(1)
			}
		}()
	}
	wg.Wait()
	return float64(count.Load()) / time.Since(start).Seconds(), acks, nil
}

// storedOnPostgres runs stored against imbridge with its history in the
// PostgreSQL database dsn, and returns messages per second, the sorted
// PUBACK latencies and the messages per commit.
func storedOnPostgres(s sizes, n int, dsn string, secret []byte, progress func(string, ...any)) (float64, []time.Duration, float64, error) {
	dir, err := os.MkdirTemp("", "loadtest-pg")
	if err != nil {
		return 0, nil, 0, err
	}
	defer os.RemoveAll(dir)
	progress("stored, %d senders: imbridge on PostgreSQL", n)
	t, err := startTarget(kindBridge, dir, secret, envPostgres+"="+dsn)
	if err != nil {
		return 0, nil, 0, err
	}
	defer t.stop()
	w := wire{t}
	before, err := t.stats(false)
	if err != nil {
		return 0, nil, 0, err
	}
	r, lat, err := stored(w, s, n)
	if err != nil {
		return 0, nil, 0, err
	}
	after, err := t.stats(false)
	if err != nil || after.Commits == before.Commits {
		return 0, nil, 0, fmt.Errorf("stored on PostgreSQL: no commit counted (%v)", err)
	}
	return r, lat.sorted(), float64(after.Appended-before.Appended) / float64(after.Commits-before.Commits), nil
}

// boltBatch is the baseline of stored: bbolt's own db.Batch with n
// concurrent writers on the same disk, one key per call.
func boltBatch(dir string, d time.Duration, n int) (float64, error) {
	db, err := bolt.Open(filepath.Join(dir, fmt.Sprintf("batch-%d.db", n)), 0o600, nil)
	if err != nil {
		return 0, err
	}
	defer db.Close()
	if err := db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucket([]byte("b")); return err }); err != nil {
		return 0, err
	}
	val := make([]byte, 200)
	var count atomic.Int64
	deadline := time.Now().Add(d)
	start := time.Now()
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				db.Batch(func(tx *bolt.Tx) error {
					b := tx.Bucket([]byte("b"))
					seq, _ := b.NextSequence()
					return b.Put(fmt.Appendf(nil, "%016x", seq), val)
				})
				count.Add(1)
			}
		}()
	}
	wg.Wait()
	return float64(count.Load()) / time.Since(start).Seconds(), nil
}

// boltCommit measures one fsynced bbolt Update on this disk, in µs.
func boltCommit(dir string) (float64, error) {
	db, err := bolt.Open(filepath.Join(dir, "commit.db"), 0o600, nil)
	if err != nil {
		return 0, err
	}
	defer db.Close()
	db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucket([]byte("b")); return err })
	const n = 500
	start := time.Now()
	for i := range n {
		db.Update(func(tx *bolt.Tx) error {
			return tx.Bucket([]byte("b")).Put(fmt.Appendf(nil, "%08d", i), make([]byte, 200))
		})
	}
	return float64(time.Since(start).Microseconds()) / n, nil
}

// seedHistory writes n stored messages between "hub" and 100 peers straight
// into the history file of dataDir, before the server opens it.
func seedHistory(dataDir string, n int, progress func(done int)) error {
	s, err := storage.OpenBolt(filepath.Join(dataDir, "history.db"), &storage.Options{MaxBatch: 4096})
	if err != nil {
		return err
	}
	defer s.Close()
	var next atomic.Int64
	data := json.RawMessage(`{"text":"a message of ordinary length, about like this one"}`)
	var wg sync.WaitGroup
	for range 1024 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1)
				if i > int64(n) {
					return
				}
				from, to := "hub", fmt.Sprintf("u%d", i%100)
				if i%2 == 0 {
					from, to = to, from
				}
				s.Append(context.Background(), protocol.Message{ID: fmt.Sprintf("seed%d", i), From: from, To: to, Time: i, Data: data})
				if i%50_000 == 0 {
					progress(int(i))
				}
			}
		}()
	}
	wg.Wait()
	return nil
}

// historyQueries times HTTP history pages and syncs of the seeded history.
func historyQueries(w wire, s sizes) (hist, sync *latencies, err error) {
	tok := w.password("hub")
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
	get := func(path string, into *latencies) error {
		req, _ := http.NewRequest("GET", "http://"+w.t.HTTP+path, nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		t0 := time.Now()
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		into.add(time.Since(t0))
		if resp.StatusCode != 200 {
			return fmt.Errorf("GET %s: %s", path, resp.Status)
		}
		return nil
	}
	hist, sync = &latencies{}, &latencies{}
	for i := range s.historyQueries {
		if err := get(fmt.Sprintf("/v1/history?with=u%d&limit=50", i%100), hist); err != nil {
			return nil, nil, err
		}
		after := rand.IntN(max(1, s.historyMsgs-50))
		if err := get(fmt.Sprintf("/v1/sync?after=%d&limit=50", after), sync); err != nil {
			return nil, nil, err
		}
	}
	return hist, sync, nil
}

// capacity connects n idle devices, each with its inbox and shared online
// subscription, and returns connects per second and the server's RSS and
// goroutines per device.
func capacity(w wire, n int) (perSec, rssPer, gorPer float64, err error) {
	before, err := w.t.stats(true)
	if err != nil {
		return 0, 0, 0, err
	}
	conns := make([]net.Conn, n)
	var next atomic.Int64
	var firstErr atomic.Value
	start := time.Now()
	var wg sync.WaitGroup
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				user := fmt.Sprintf("d%d", i)
				c, err := w.rawDial(user, user, w.filter(user, false), w.filter(user, true))
				if err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				conns[i] = c
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	if e := firstErr.Load(); e != nil {
		return 0, 0, 0, e.(error)
	}
	after, err := w.t.stats(true)
	if err != nil {
		return 0, 0, 0, err
	}
	return float64(n) / elapsed.Seconds(), float64(after.RSS-before.RSS) / float64(n),
		float64(after.Goroutines-before.Goroutines) / float64(n), nil
}

// fanout sends stored messages to a user with 5 connected devices and
// returns deliveries per second and the send-to-delivery latencies.
func fanout(w wire, s sizes) (float64, *latencies, error) {
	lat := &latencies{}
	var last atomic.Int64
	var devs []paho.Client
	for i := range 5 {
		c, err := w.dial("fan", fmt.Sprintf("fan-%d", i), true, map[string]byte{w.filter("fan", false): 1},
			func(_ paho.Client, m paho.Message) { lat.record(m.Payload()); last.Store(time.Now().UnixNano()) })
		if err != nil {
			return 0, nil, err
		}
		devs = append(devs, c)
	}
	defer func() {
		for _, c := range devs {
			c.Disconnect(0)
		}
	}()
	src, err := w.dial("src", "src-dev", true, nil, nil)
	if err != nil {
		return 0, nil, err
	}
	defer src.Disconnect(0)
	start := time.Now()
	for range s.fanoutMsgs {
		tok := src.Publish(w.pubTopic("src", "fan", false), 1, false, w.payload("fan", false, ""))
		if !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
			return 0, nil, fmt.Errorf("fan-out send: %v", tok.Error())
		}
	}
	waitCount(lat.n.Load, int64(5*s.fanoutMsgs), 2*time.Second)
	return float64(lat.n.Load()) / time.Duration(last.Load()-start.UnixNano()).Seconds(), lat, nil
}

// pick sends online-only messages to a user with one connected device and
// four disconnected persistent sessions on the shared subscription, and
// returns the share that reached the connected one.
func pick(w wire, s sizes) (float64, error) {
	filter := map[string]byte{w.filter("pick", true): 1}
	for i := range 4 {
		c, err := w.dial("pick", fmt.Sprintf("away-%d", i), false, filter, func(paho.Client, paho.Message) {})
		if err != nil {
			return 0, err
		}
		c.Disconnect(0)
	}
	// Wait until the server has seen them go (Disconnect returns before).
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		st, err := w.t.stats(false)
		if err == nil && st.Clients == 0 {
			break
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("persistent devices still connected: %+v %v", st, err)
		}
	}
	var got atomic.Int64
	live, err := w.dial("pick", "live", true, filter, func(paho.Client, paho.Message) { got.Add(1) })
	if err != nil {
		return 0, err
	}
	defer live.Disconnect(0)
	src, err := w.dial("src", "src-dev", true, nil, nil)
	if err != nil {
		return 0, err
	}
	defer src.Disconnect(0)
	for range s.pickMsgs {
		tok := src.Publish(w.pubTopic("src", "pick", true), 1, false, w.payload("pick", true, ""))
		if !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
			return 0, fmt.Errorf("pick send: %v", tok.Error())
		}
	}
	waitCount(got.Load, int64(s.pickMsgs), time.Second)
	return float64(got.Load()) / float64(s.pickMsgs), nil
}
