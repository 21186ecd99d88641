// Command loadtest measures imbridge against the bare mochi broker it is
// built on, in the same run on the same machine, and reports both side by
// side: online-only latency and throughput, stored-message throughput and
// PUBACK latency (with bbolt's own db.Batch as a second baseline), history
// queries over a large store, memory and goroutines per idle device, and
// fan-out and the shared-subscription pick; and, for a cluster, online-only
// latency across two nodes joined by NATS against the same load on one node.
//
//	go run ./loadtest                       # the full run (several minutes)
//	go run ./loadtest -quick                # a small run (about a minute)
//	go run ./loadtest -md docs/perf/results.md -png docs/perf
//
// Each server runs as a child process of the tool (the same binary), so that
// its memory and goroutines are measured apart from the load's; the load
// itself is real MQTT clients (paho) over loopback TCP. The baseline is mochi
// with the same capabilities and no bridge, allowing every client.
package main

import (
	"flag"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

func main() {
	if serveFromEnv() {
		return
	}
	quick := flag.Bool("quick", false, "small sizes: a run of about a minute")
	only := flag.String("scenarios", "latency,throughput,stored,history,capacity,fanout,cluster", "comma-separated scenarios to run")
	md := flag.String("md", "", "also write the report as Markdown to this file")
	png := flag.String("png", "", "write latency distribution plots (PNG) into this directory")
	pg := flag.String("postgres", "", "stored scenario: also run imbridge with its history in this PostgreSQL database (a DSN, as mqttd -postgres), next to bbolt")
	soakFor := flag.Duration("soak", 0, "instead of the scenarios, soak a node this long (e.g. 12m): idle devices, active pairs, graceful restarts")
	soakIdle := flag.Int("soak-idle", 2000, "soak: idle devices")
	soakPairs := flag.Int("soak-pairs", 50, "soak: pairs sending stored and online-only messages")
	soakRestart := flag.Duration("soak-restart", 3*time.Minute, "soak: restart the server this often")
	flag.Parse()
	if *soakFor > 0 {
		os.Exit(runSoak(*soakFor, *soakIdle, *soakPairs, *soakRestart, *md))
	}
	s := fullSizes
	if *quick {
		s = quickSizes
	}
	rows, plots, err := run(s, strings.Split(*only, ","), *pg, os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadtest:", err)
		os.Exit(1)
	}
	text(os.Stdout, rows)
	header := fmt.Sprintf("Measured %s on %s", time.Now().UTC().Format("2006-01-02"), machine())
	if *md != "" {
		f, err := os.Create(*md)
		if err == nil {
			markdown(f, rows, header)
			err = f.Close()
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "loadtest:", err)
			os.Exit(1)
		}
	}
	if *png != "" {
		for name, series := range plots {
			if err := cdfPlot(filepath.Join(*png, name+".png"), plotTitles[name], series); err != nil {
				fmt.Fprintln(os.Stderr, "loadtest: plot:", err)
				os.Exit(1)
			}
		}
	}
}

var plotTitles = map[string]string{
	"latency-online": "online-only one-way latency, paced (imbridge vs bare mochi QoS 0)",
	"latency-stored": "stored message PUBACK latency, 16 senders (imbridge vs bare mochi QoS 1)",
}

func machine() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	cpus, model := 0, ""
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "processor") {
			cpus++
		}
		if v, ok := strings.CutPrefix(l, "model name"); ok && model == "" {
			model = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
		}
	}
	return fmt.Sprintf("%d × %s", cpus, model)
}

// run runs the scenarios and returns the report rows and the latency series
// to plot (plot name -> server kind -> sorted latencies). pg, if set, is the
// PostgreSQL DSN of the stored scenario's third run.
func run(s sizes, only []string, pg string, log *os.File) ([]row, map[string]map[string][]time.Duration, error) {
	progress := func(format string, args ...any) {
		fmt.Fprintf(log, "%s  "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
	}
	secret := []byte("loadtest-secret-0123456789")
	var rows []row
	plots := map[string]map[string][]time.Duration{}
	nan := math.NaN()
	atMost := func(limit float64) func(b, base float64) bool {
		return func(b, base float64) bool { return b/base <= limit }
	}
	atLeast := func(limit float64) func(b, base float64) bool {
		return func(b, base float64) bool { return b/base >= limit }
	}

	// each runs f against a fresh bare mochi, then a fresh imbridge.
	each := func(name string, f func(w wire) error) error {
		for _, kind := range []string{kindBare, kindBridge} {
			dir, err := os.MkdirTemp("", "loadtest")
			if err != nil {
				return err
			}
			defer os.RemoveAll(dir)
			progress("%s: %s", name, kind)
			t, err := startTarget(kind, dir, secret)
			if err != nil {
				return err
			}
			err = f(wire{t})
			t.stop()
			if err != nil {
				return fmt.Errorf("%s on %s: %w", name, kind, err)
			}
		}
		return nil
	}

	if slices.Contains(only, "latency") {
		res := map[string][]time.Duration{}
		sent := map[string]int64{}
		got := map[string]int64{}
		err := each("online-only latency", func(w wire) error {
			lat, n, err := onlineLatency(w, s)
			if err == nil {
				res[w.t.kind], sent[w.t.kind], got[w.t.kind] = lat.sorted(), n, lat.n.Load()
			}
			return err
		})
		if err != nil {
			return nil, nil, err
		}
		plots["latency-online"] = res
		sc := fmt.Sprintf("online-only latency, %d pairs, %d msg/s", s.latencyPairs, s.latencyRate)
		for _, p := range []float64{50, 99, 99.9, 100} {
			r := row{scenario: sc, metric: pName(p), unit: "µs", bridge: pct(res[kindBridge], p), base: pct(res[kindBare], p)}
			if p == 99 {
				r.goal, r.check = "≤ 1.5x", atMost(1.5)
			}
			rows = append(rows, r)
		}
		rows = append(rows, row{scenario: sc, metric: "delivered/sent", unit: "ratio",
			bridge: float64(got[kindBridge]) / float64(sent[kindBridge]), base: float64(got[kindBare]) / float64(sent[kindBare])})
	}

	if slices.Contains(only, "cluster") {
		across, alone, acrossGot, aloneGot, err := clusterOnline(s, secret, progress)
		if err != nil {
			return nil, nil, fmt.Errorf("cluster: %w", err)
		}
		sc := fmt.Sprintf("online-only across 2 nodes (NATS), %d pairs, %d msg/s", s.latencyPairs, s.latencyRate)
		for _, p := range []float64{50, 99} {
			r := row{scenario: sc, metric: pName(p), unit: "µs", bridge: pct(across, p), base: pct(alone, p), baseName: "one node"}
			if p == 99 {
				r.goal, r.check = "≤ 2x", atMost(2)
			}
			rows = append(rows, r)
		}
		rows = append(rows, row{scenario: sc, metric: "delivered/sent", unit: "ratio", bridge: acrossGot, base: aloneGot, baseName: "one node"})
		if pg != "" {
			n := s.storedSenders[len(s.storedSenders)-1]
			res, err := clusterStored(s, secret, pg, n, progress)
			if err != nil {
				return nil, nil, fmt.Errorf("cluster: %w", err)
			}
			sc := fmt.Sprintf("stored (QoS 1) on PostgreSQL, %d senders, 3 nodes", n)
			rows = append(rows,
				row{scenario: sc, metric: "sent, each waiting for PUBACK", unit: "msg/s", bridge: res.rate[1], base: res.rate[0], baseName: "one node"},
				row{scenario: sc, metric: "PUBACK p99", unit: "µs", bridge: pct(res.acks[1], 99), base: pct(res.acks[0], 99), baseName: "one node"},
				row{scenario: sc, metric: "messages per commit", unit: "msgs", bridge: res.perCommit[1], base: res.perCommit[0], baseName: "one node"})
		}
	}

	if slices.Contains(only, "throughput") {
		rate, ratio := map[string]float64{}, map[string]float64{}
		err := each("online-only throughput", func(w wire) error {
			r, q, err := onlineThroughput(w, s)
			rate[w.t.kind], ratio[w.t.kind] = r, q
			return err
		})
		if err != nil {
			return nil, nil, err
		}
		sc := fmt.Sprintf("online-only flat out, %d pairs", s.tputPairs)
		rows = append(rows,
			row{scenario: sc, metric: "delivered", unit: "msg/s", bridge: rate[kindBridge], base: rate[kindBare], goal: "≥ 0.8x", check: atLeast(0.8)},
			row{scenario: sc, metric: "delivered/sent", unit: "ratio", bridge: ratio[kindBridge], base: ratio[kindBare]})
	}

	if slices.Contains(only, "stored") {
		dir, err := os.MkdirTemp("", "loadtest-bolt")
		if err != nil {
			return nil, nil, err
		}
		defer os.RemoveAll(dir)
		commit, err := boltCommit(dir)
		if err != nil {
			return nil, nil, err
		}
		for _, n := range s.storedSenders {
			rate := map[string]float64{}
			acks := map[string][]time.Duration{}
			var perCommit float64
			err := each(fmt.Sprintf("stored, %d senders", n), func(w wire) error {
				before, _ := w.t.stats(false)
				r, lat, err := stored(w, s, n)
				if err != nil {
					return err
				}
				after, _ := w.t.stats(false)
				rate[w.t.kind], acks[w.t.kind] = r, lat.sorted()
				if w.bridge() && after.Commits > before.Commits {
					perCommit = float64(after.Appended-before.Appended) / float64(after.Commits-before.Commits)
				}
				return nil
			})
			if err != nil {
				return nil, nil, err
			}
			progress("stored, %d senders: bbolt db.Batch", n)
			batch, err := boltBatch(dir, s.duration, n)
			if err != nil {
				return nil, nil, err
			}
			sc := fmt.Sprintf("stored (QoS 1), %d sender(s)", n)
			r := row{scenario: sc, metric: "sent, each waiting for PUBACK", unit: "msg/s", bridge: rate[kindBridge], base: rate[kindBare]}
			if n > 1 {
				r.goal, r.check = "≥ 0.7x", atLeast(0.7)
				plots["latency-stored"] = acks
			}
			rows = append(rows, r,
				row{scenario: sc, metric: "vs bbolt db.Batch, same writers", unit: "msg/s", bridge: rate[kindBridge], base: batch, baseName: "db.Batch"},
				row{scenario: sc, metric: "PUBACK p50", unit: "µs", bridge: pct(acks[kindBridge], 50), base: pct(acks[kindBare], 50)},
				row{scenario: sc, metric: "PUBACK p99", unit: "µs", bridge: pct(acks[kindBridge], 99), base: pct(acks[kindBare], 99)},
				row{scenario: sc, metric: "messages per commit", unit: "msgs", bridge: perCommit, base: nan})
			if n == 1 {
				rows = append(rows, row{scenario: sc, metric: "PUBACK p50 vs one bbolt commit", unit: "µs",
					bridge: pct(acks[kindBridge], 50), base: commit, baseName: "1 commit", goal: "≤ 3x", check: atMost(3)})
			}
			if pg != "" {
				r, lat, perCommitPG, err := storedOnPostgres(s, n, pg, secret, progress)
				if err != nil {
					return nil, nil, err
				}
				sc := fmt.Sprintf("stored (QoS 1), %d sender(s): PostgreSQL vs bbolt", n)
				rows = append(rows,
					row{scenario: sc, metric: "sent, each waiting for PUBACK", unit: "msg/s", bridge: r, base: rate[kindBridge], baseName: "bbolt"},
					row{scenario: sc, metric: "PUBACK p50", unit: "µs", bridge: pct(lat, 50), base: pct(acks[kindBridge], 50), baseName: "bbolt"},
					row{scenario: sc, metric: "PUBACK p99", unit: "µs", bridge: pct(lat, 99), base: pct(acks[kindBridge], 99), baseName: "bbolt"},
					row{scenario: sc, metric: "messages per commit", unit: "msgs", bridge: perCommitPG, base: perCommit, baseName: "bbolt"})
			}
		}
	}

	if slices.Contains(only, "history") {
		dir, err := os.MkdirTemp("", "loadtest-history")
		if err != nil {
			return nil, nil, err
		}
		defer os.RemoveAll(dir)
		progress("history: seeding %d messages", s.historyMsgs)
		start := time.Now()
		if err := seedHistory(dir, s.historyMsgs, func(done int) { progress("history: %d seeded", done) }); err != nil {
			return nil, nil, err
		}
		progress("history: seeded in %v; querying", time.Since(start).Round(time.Second))
		t, err := startTarget(kindBridge, dir, secret)
		if err != nil {
			return nil, nil, err
		}
		hist, sync, err := historyQueries(wire{t}, s)
		t.stop()
		if err != nil {
			return nil, nil, err
		}
		h, sy := hist.sorted(), sync.sorted()
		sc := fmt.Sprintf("history over HTTP, %d stored", s.historyMsgs)
		rows = append(rows,
			row{scenario: sc, metric: "newest 50 of a conversation, p50", unit: "µs", bridge: pct(h, 50), base: nan},
			row{scenario: sc, metric: "newest 50 of a conversation, p99", unit: "µs", bridge: pct(h, 99), base: 2000, baseName: "target",
				goal: "< 2 ms", check: func(b, _ float64) bool { return b < 2000 }},
			row{scenario: sc, metric: "sync 50 from a cursor, p50", unit: "µs", bridge: pct(sy, 50), base: nan},
			row{scenario: sc, metric: "sync 50 from a cursor, p99", unit: "µs", bridge: pct(sy, 99), base: nan})
	}

	if slices.Contains(only, "capacity") {
		perSec, rss, gor := map[string]float64{}, map[string]float64{}, map[string]float64{}
		err := each(fmt.Sprintf("capacity, %d devices", s.devices), func(w wire) error {
			a, b, c, err := capacity(w, s.devices)
			perSec[w.t.kind], rss[w.t.kind], gor[w.t.kind] = a, b, c
			return err
		})
		if err != nil {
			return nil, nil, err
		}
		sc := fmt.Sprintf("%d idle devices, 2 subs each", s.devices)
		rows = append(rows,
			row{scenario: sc, metric: "memory per device (RSS)", unit: "KB", bridge: rss[kindBridge] / 1024, base: rss[kindBare] / 1024, goal: "≤ 1.2x", check: atMost(1.2)},
			row{scenario: sc, metric: "goroutines per device", unit: "n", bridge: gor[kindBridge], base: gor[kindBare]},
			row{scenario: sc, metric: "connects (with subscribe)", unit: "/s", bridge: perSec[kindBridge], base: perSec[kindBare]})
	}

	if slices.Contains(only, "fanout") {
		rate, share := map[string]float64{}, map[string]float64{}
		lat := map[string][]time.Duration{}
		err := each("fan-out and shared pick", func(w wire) error {
			r, l, err := fanout(w, s)
			if err != nil {
				return err
			}
			rate[w.t.kind], lat[w.t.kind] = r, l.sorted()
			share[w.t.kind], err = pick(w, s)
			return err
		})
		if err != nil {
			return nil, nil, err
		}
		rows = append(rows,
			row{scenario: "stored to a user with 5 devices", metric: "deliveries", unit: "/s", bridge: rate[kindBridge], base: rate[kindBare]},
			row{scenario: "stored to a user with 5 devices", metric: "send to delivery p99", unit: "µs", bridge: pct(lat[kindBridge], 99), base: pct(lat[kindBare], 99)},
			row{scenario: "shared pick, 1 of 5 devices online", metric: "reached the online device", unit: "share", bridge: share[kindBridge], base: share[kindBare],
				goal: "all", check: func(b, _ float64) bool { return b == 1 }})
	}
	return rows, plots, nil
}

func pName(p float64) string {
	if p == 100 {
		return "max"
	}
	return fmt.Sprintf("p%v", p)
}

// runSoak runs the soak, prints its samples and findings (and writes them as
// Markdown to md), and returns the exit code: 1 if an acknowledged message
// was lost.
func runSoak(d time.Duration, idle, pairs int, restart time.Duration, md string) int {
	progress := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "%s  "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
	}
	res, err := soak(d, idle, pairs, restart, progress)
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadtest: soak:", err)
		return 1
	}
	var b strings.Builder
	fmt.Fprintf(&b, "Soak of %v on %s: %d idle devices, %d pairs (%d devices in all), a graceful restart every %v (%d restarts).\n\n",
		d, machine(), idle, pairs, idle+2*pairs, restart, res.restarts)
	fmt.Fprintln(&b, "| time | restarts so far | server RSS (history mmap included) | Go heap | goroutines | connected | stored acknowledged |")
	fmt.Fprintln(&b, "|---:|---:|---:|---:|---:|---:|---:|")
	for _, s := range res.samples {
		fmt.Fprintf(&b, "| %v | %d | %d MB | %d MB | %d | %d | %d |\n", s.at, s.restarts, s.rss>>20, s.heap>>20, s.goroutines, s.clients, s.acked)
	}
	fmt.Fprintf(&b, "\n%d stored messages acknowledged, %d in the history, %d lost; %d online-only sent.\n", res.acked, res.stored, len(res.lost), res.online)
	fmt.Print(b.String())
	if md != "" {
		if err := os.WriteFile(md, []byte(b.String()), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "loadtest:", err)
			return 1
		}
	}
	if len(res.lost) > 0 {
		fmt.Fprintln(os.Stderr, "loadtest: soak: acknowledged messages lost:", res.lost[:min(10, len(res.lost))])
		return 1
	}
	return 0
}
