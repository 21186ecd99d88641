package main

import (
	"math"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/imbridge/imbridge/internal/testpg"
)

// TestMain lets this test binary act as the tool's server child too.
func TestMain(m *testing.M) {
	if serveFromEnv() {
		return
	}
	os.Exit(m.Run())
}

// TestTinyRun runs every scenario at a tiny size: the tool keeps working,
// reports every row with a number, and imbridge keeps its promises where
// they do not depend on speed (all deliveries arrive; the shared pick
// reaches the online device every time, where bare mochi's does not).
func TestTinyRun(t *testing.T) {
	s := sizes{duration: 300 * time.Millisecond, latencyPairs: 2, latencyRate: 200, tputPairs: 2,
		storedSenders: []int{1, 2}, historyMsgs: 500, historyQueries: 10, devices: 20, fanoutMsgs: 20, pickMsgs: 40}
	rows, plots, err := run(s, []string{"latency", "throughput", "stored", "history", "capacity", "fanout", "cluster"}, "", os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	var md strings.Builder
	markdown(&md, rows, "test")
	t.Log("\n" + md.String())
	if len(rows) < 20 {
		t.Fatalf("%d rows", len(rows))
	}
	for _, r := range rows {
		if r.metric != "messages per commit" && (math.IsNaN(r.bridge) || math.IsInf(r.bridge, 0)) {
			t.Errorf("%s / %s: no imbridge figure", r.scenario, r.metric)
		}
		if r.metric == "reached the online device" && (r.bridge != 1 || r.base >= 1) {
			t.Errorf("shared pick: imbridge %v, bare mochi %v", r.bridge, r.base)
		}
		if (strings.HasPrefix(r.scenario, "online-only latency") || strings.HasPrefix(r.scenario, "online-only across")) &&
			r.metric == "delivered/sent" && r.bridge != 1 {
			t.Errorf("paced online-only messages lost: %v delivered", r.bridge)
		}
	}
	if len(plots["latency-online"][kindBridge]) == 0 || len(plots["latency-online"][kindBare]) == 0 {
		t.Fatal("no latency samples to plot")
	}
	if err := cdfPlot(t.TempDir()+"/x.png", "test", plots["latency-online"]); err != nil {
		t.Fatal(err)
	}
}

// TestStoredOnPostgres runs the stored scenario with -postgres at a tiny
// size: the PostgreSQL rows are there, with figures.
func TestStoredOnPostgres(t *testing.T) {
	dsn := testpg.Start(t).NewDB(t)
	s := sizes{duration: 300 * time.Millisecond, storedSenders: []int{2}}
	rows, _, err := run(s, []string{"stored"}, dsn, os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, r := range rows {
		if strings.Contains(r.scenario, "PostgreSQL") {
			n++
			if math.IsNaN(r.bridge) || r.bridge <= 0 {
				t.Errorf("%s / %s: %v", r.scenario, r.metric, r.bridge)
			}
		}
	}
	if n != 4 {
		t.Fatalf("%d PostgreSQL rows, want 4", n)
	}
}

// TestTinyClusterRun runs the cluster scenario with its PostgreSQL part at
// a tiny size: one node and three nodes on a real PostgreSQL and NATS.
func TestTinyClusterRun(t *testing.T) {
	dsn := testpg.Start(t).NewDB(t)
	s := sizes{duration: 300 * time.Millisecond, latencyPairs: 2, latencyRate: 200, storedSenders: []int{3}}
	rows, _, err := run(s, []string{"cluster"}, dsn, os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	var md strings.Builder
	markdown(&md, rows, "test")
	t.Log("\n" + md.String())
	stored := 0
	for _, r := range rows {
		if math.IsNaN(r.bridge) || math.IsNaN(r.base) || r.bridge <= 0 || r.base <= 0 {
			t.Errorf("%s / %s: %v vs %v", r.scenario, r.metric, r.bridge, r.base)
		}
		if strings.HasPrefix(r.scenario, "stored") {
			stored++
		}
	}
	if stored != 3 {
		t.Fatalf("%d rows of stored sends across nodes, want 3", stored)
	}
}
