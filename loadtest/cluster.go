package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// startNATS runs a NATS server in the load tool's process on a free
// loopback port, for the nodes of the cluster scenario.
func startNATS() (*natsserver.Server, string, error) {
	srv, err := natsserver.NewServer(&natsserver.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true})
	if err != nil {
		return nil, "", err
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		srv.Shutdown()
		return nil, "", errors.New("NATS server not ready")
	}
	return srv, fmt.Sprintf("nats://127.0.0.1:%d", srv.Addr().(*net.TCPAddr).Port), nil
}

// reachable returns a ready function for onlineLatencyAcross: it waits until
// some node serves each receiver's online-only subject (a node takes a
// user's subjects a moment after the device connected).
func reachable(url string) func(users []string) error {
	return func(users []string) error {
		nc, err := nats.Connect(url)
		if err != nil {
			return err
		}
		defer nc.Close()
		deadline := time.Now().Add(30 * time.Second)
		for _, u := range users {
			for {
				_, err := nc.Request("imbridge.online."+u, []byte("{}"), time.Second)
				if err == nil {
					break
				}
				if !errors.Is(err, nats.ErrNoResponders) || time.Now().After(deadline) {
					return fmt.Errorf("receiver %s not reachable across nodes: %w", u, err)
				}
				time.Sleep(10 * time.Millisecond) // polling the cluster's state, not timing the load
			}
		}
		return nil
	}
}

// clusterOnline measures online-only latency with senders on node a and
// receivers on node b of a two-node cluster, and the same load on one
// node, in the same run.
// It returns both latency series and, for each, the share of the sent
// messages that were delivered.
func clusterOnline(s sizes, secret []byte, progress func(string, ...any)) (across, alone []time.Duration, acrossGot, aloneGot float64, err error) {
	srv, url, err := startNATS()
	if err != nil {
		return nil, nil, 0, 0, err
	}
	defer srv.Shutdown()
	var targets []*target
	defer func() {
		for _, t := range targets {
			t.stop()
			os.RemoveAll(t.dataDir)
		}
	}()
	start := func(env ...string) (*target, error) {
		dir, err := os.MkdirTemp("", "loadtest-cluster")
		if err != nil {
			return nil, err
		}
		t, err := startTarget(kindBridge, dir, secret, env...)
		if err != nil {
			os.RemoveAll(dir)
		}
		if err == nil {
			targets = append(targets, t)
		}
		return t, err
	}

	progress("online-only latency: one node")
	one, err := start()
	if err != nil {
		return nil, nil, 0, 0, err
	}
	lat, sent, err := onlineLatency(wire{one}, s)
	if err != nil {
		return nil, nil, 0, 0, err
	}
	alone, aloneGot = lat.sorted(), float64(lat.n.Load())/float64(sent)

	progress("online-only latency: across two nodes")
	a, err := start(envNATS+"="+url, envNode+"=a")
	if err != nil {
		return nil, nil, 0, 0, err
	}
	b, err := start(envNATS+"="+url, envNode+"=b")
	if err != nil {
		return nil, nil, 0, 0, err
	}
	lat, sent, err = onlineLatencyAcross(wire{a}, wire{b}, s, reachable(url))
	if err != nil {
		return nil, nil, 0, 0, err
	}
	if st, err := a.stats(false); err == nil && st.Delivered != sent {
		progress("across two nodes: %d sent, %d received, %d delivered, %d offline, %d unroutable (the other node did not answer in time)",
			sent, lat.n.Load(), st.Delivered, st.Offline, st.Unroutable)
	}
	return lat.sorted(), alone, float64(lat.n.Load()) / float64(sent), aloneGot, nil
}

// storedResult is clusterStored's figures: index 0 for one node, 1 for
// three.
type storedResult struct {
	rate, perCommit [2]float64
	acks            [2][]time.Duration
}

// clusterStored runs the stored scenario with n senders against one node
// and then three nodes (senders spread over the nodes, each receiver on
// another node than its sender), all with their history in the PostgreSQL
// database dsn.
func clusterStored(s sizes, secret []byte, dsn string, n int, progress func(string, ...any)) (storedResult, error) {
	var res storedResult
	srv, url, err := startNATS()
	if err != nil {
		return res, err
	}
	defer srv.Shutdown()
	for i, names := range [][]string{{"solo"}, {"a", "b", "c"}} {
		progress("stored on PostgreSQL, %d senders: %d node(s)", n, len(names))
		var ws []wire
		stopAll := func() {
			for _, w := range ws {
				w.t.stop()
				os.RemoveAll(w.t.dataDir)
			}
		}
		for _, name := range names {
			dir, err := os.MkdirTemp("", "loadtest-cluster")
			if err != nil {
				stopAll()
				return res, err
			}
			env := []string{envPostgres + "=" + dsn}
			if len(names) > 1 {
				env = append(env, envNATS+"="+url, envNode+"="+name)
			}
			t, err := startTarget(kindBridge, dir, secret, env...)
			if err != nil {
				os.RemoveAll(dir)
				stopAll()
				return res, err
			}
			ws = append(ws, wire{t})
		}
		var before []serverStats
		for _, w := range ws {
			st, _ := w.t.stats(false)
			before = append(before, st)
		}
		rate, lat, err := storedAcross(ws, s, n)
		var commits, appended uint64
		for j, w := range ws {
			st, _ := w.t.stats(false)
			commits += st.Commits - before[j].Commits
			appended += st.Appended - before[j].Appended
		}
		stopAll()
		if err != nil {
			return res, err
		}
		res.rate[i], res.acks[i] = rate, lat.sorted()
		if commits > 0 {
			res.perCommit[i] = float64(appended) / float64(commits)
		}
	}
	return res, nil
}
