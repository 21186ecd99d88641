package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/system"

	"github.com/imbridge/imbridge/bridge"
	"github.com/imbridge/imbridge/server"
	"github.com/imbridge/imbridge/storage"
	"github.com/imbridge/imbridge/storage/postgres"
)

// The two kinds of server every scenario runs against.
const (
	kindBridge = "imbridge"
	kindBare   = "bare mochi"
)

// serverStats is what a child server reports about itself.
type serverStats struct {
	RSS        int64  `json:"rss"`  // bytes, the history's mmap included
	Heap       int64  `json:"heap"` // bytes of Go heap in use
	Goroutines int    `json:"goroutines"`
	Commits    uint64 `json:"commits"`  // imbridge only
	Appended   uint64 `json:"appended"` // imbridge only
	Delivered  int64  `json:"delivered"`
	Offline    int64  `json:"offline"`    // imbridge only: online-only sends with no device to take them
	Unroutable int64  `json:"unroutable"` // imbridge only: online-only sends the other nodes could not be asked about
	Clients    int64  `json:"clients"`    // connected, as the server sees it
}

// The environment that makes the load tool's binary (or its test binary)
// serve instead of load: see serveFromEnv.
const (
	envServe  = "LOADTEST_SERVE"
	envData   = "LOADTEST_DATA"
	envSecret = "LOADTEST_SECRET"
	// envProfile, set by the user, makes each child write a CPU profile to
	// $LOADTEST_CPUPROFILE.<kind>.pprof.
	envProfile = "LOADTEST_CPUPROFILE"
	// envAddrs, "MQTT HTTP", fixes the child's addresses (the soak restarts
	// it on the same ones).
	envAddrs = "LOADTEST_ADDRS"
	// envPostgres, a DSN, makes an imbridge child keep its history in
	// PostgreSQL (as mqttd -postgres) instead of bbolt.
	envPostgres = "LOADTEST_POSTGRES"
	// envNATS and envNode join the child to a cluster (the cluster scenario).
	envNATS = "LOADTEST_NATS"
	envNode = "LOADTEST_NODE"
)

// serveFromEnv runs the child side if the environment asks for it, and
// reports whether it did.
func serveFromEnv() bool {
	kind := os.Getenv(envServe)
	if kind == "" {
		return false
	}
	if path := os.Getenv(envProfile); path != "" {
		f, err := os.Create(path + "." + strings.ReplaceAll(kind, " ", "-") + ".pprof")
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "loadtest serve: profile:", err)
			os.Exit(1)
		}
		defer pprof.StopCPUProfile()
	}
	if err := serve(kind, os.Getenv(envData), []byte(os.Getenv(envSecret))); err != nil {
		fmt.Fprintln(os.Stderr, "loadtest serve:", err)
		os.Exit(1)
	}
	return true
}

// ready is the line a child prints once it serves.
type ready struct {
	MQTT  string `json:"mqtt"`
	HTTP  string `json:"http"`
	Stats string `json:"stats"`
}

// serve runs a server in this process until stdin closes: the child side of
// target. kind is kindBridge or kindBare; both use imbridge's mochi settings.
func serve(kind, dataDir string, secret []byte) error {
	// The load is many devices from one IP, sending flat out: no limits.
	mqttAddr, httpAddr := "127.0.0.1:0", "127.0.0.1:0"
	if a := strings.Fields(os.Getenv(envAddrs)); len(a) == 2 {
		mqttAddr, httpAddr = a[0], a[1]
	}
	cfg := server.Config{MQTTAddr: mqttAddr, HTTPAddr: httpAddr, DataDir: dataDir, Secret: secret,
		Limits: bridge.Limits{ConnectRatePerIP: -1, ConnectRatePerUser: -1, SendRate: -1, QueryRate: -1, MaxDevicesPerUser: 100}, MaxConnsPerIP: -1}
	if url := os.Getenv(envNATS); url != "" {
		cfg.NATS, cfg.Node = []string{url}, os.Getenv(envNode)
	}
	if dsn := os.Getenv(envPostgres); dsn != "" {
		cfg.OpenStore = func(o *storage.Options) (storage.Store, error) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			return postgres.Open(ctx, dsn, o)
		}
	}
	var r ready
	var bridge *server.Server
	var info *system.Info
	var stop func()
	switch kind {
	case kindBridge:
		s, err := server.New(cfg)
		if err == nil {
			err = s.Start()
		}
		if err != nil {
			return err
		}
		bridge = s
		r.MQTT, r.HTTP = s.MQTTAddr(), s.HTTPAddr()
		stop = func() { s.Shutdown(context.Background()) }
	case kindBare:
		m := mqtt.New(&mqtt.Options{Capabilities: cfg.MochiCapabilities(), Logger: discardLogger()})
		if err := m.AddHook(new(auth.AllowHook), nil); err != nil {
			return err
		}
		tcp := listeners.NewTCP(listeners.Config{ID: "tcp", Address: "127.0.0.1:0"})
		if err := m.AddListener(tcp); err != nil {
			return err
		}
		if err := m.Serve(); err != nil {
			return err
		}
		r.MQTT = tcp.Address()
		info = m.Info
		stop = func() { m.Close() }
	default:
		return fmt.Errorf("unknown server kind %q", kind)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	r.Stats = ln.Addr().String()
	go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("gc") != "" {
			runtime.GC()
			debug.FreeOSMemory()
		}
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		st := serverStats{RSS: rss(), Heap: int64(ms.HeapInuse), Goroutines: runtime.NumGoroutine()}
		if bridge != nil {
			h := bridge.Health()
			st.Commits, st.Appended, st.Delivered, st.Clients = h.Commits, h.Appended, h.Bridge.Delivered, h.Clients
			st.Offline, st.Unroutable = h.Bridge.Offline, h.Bridge.Unroutable
		} else {
			st.Clients = atomic.LoadInt64(&info.ClientsConnected)
		}
		json.NewEncoder(w).Encode(st)
	}))
	json.NewEncoder(os.Stdout).Encode(r)
	io.Copy(io.Discard, os.Stdin) // until the parent closes our stdin or exits
	stop()
	return nil
}

// rss returns this process's resident set size from /proc.
func rss() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// target is a server running as a child process of the load tool, so that
// its memory and goroutines are measured apart from the load's.
type target struct {
	kind    string
	dataDir string
	secret  []byte
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	ready
}

func startTarget(kind, dataDir string, secret []byte, env ...string) (*target, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self)
	cmd.Env = append(append(os.Environ(), envServe+"="+kind, envData+"="+dataDir, envSecret+"="+string(secret)), env...)
	cmd.Stderr = os.Stderr
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	t := &target{kind: kind, dataDir: dataDir, secret: secret, cmd: cmd, stdin: stdin}
	line, err := bufio.NewReader(stdout).ReadBytes('\n')
	if err == nil {
		err = json.Unmarshal(line, &t.ready)
	}
	if err != nil {
		t.stop()
		return nil, fmt.Errorf("start %s: %w", kind, err)
	}
	return t, nil
}

// stop ends the child and waits for it (at most 20 s).
func (t *target) stop() {
	t.stdin.Close()
	done := make(chan error, 1)
	go func() { done <- t.cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.cmd.Process.Kill()
		<-done
	}
}

// stats asks the child for its numbers; gc first collects garbage and
// returns free memory to the OS, for a steady RSS.
func (t *target) stats(gc bool) (serverStats, error) {
	var st serverStats
	u := "http://" + t.Stats
	if gc {
		u += "?gc=1"
	}
	resp, err := http.Get(u)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return st, errors.New(resp.Status)
	}
	return st, json.NewDecoder(resp.Body).Decode(&st)
}
