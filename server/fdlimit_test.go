package server_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/imbridge/imbridge/auth"
	"github.com/imbridge/imbridge/internal/testdevice"
	"github.com/imbridge/imbridge/internal/testserver"
	"github.com/imbridge/imbridge/protocol"
	"github.com/imbridge/imbridge/server"
)

// fdChildEnv names the data dir of the child node; set, the test binary is
// that child.
const fdChildEnv = "IMBRIDGE_FD_CHILD"

// fdHeadroom is how many descriptors the child may open beyond those it has
// once started.
const fdHeadroom = 12

// fdChild runs a node on loopback, then lowers its own RLIMIT_NOFILE to
// the descriptors it has plus fdHeadroom, prints "ready MQTT HTTP limit" and
// serves until its stdin closes. It logs to stderr.
func fdChild(dir string) int {
	s, err := server.New(server.Config{
		MQTTAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", DataDir: dir, Secret: testserver.Secret,
		ConnectTimeout: time.Minute, // the idle sockets hold their descriptors until the parent closes them
		Logger:         slog.New(slog.NewTextHandler(os.Stderr, nil)),
	})
	if err == nil {
		err = s.Start()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var lim syscall.Rlimit
	syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
	lim.Cur = uint64(len(fds) + fdHeadroom)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Printf("ready %s %s %d\n", s.MQTTAddr(), s.HTTPAddr(), lim.Cur)
	io.Copy(io.Discard, os.Stdin)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// TestAcceptSurvivesDescriptorExhaustion runs a node in a child process
// with a low descriptor limit, exhausts it with idle sockets (the MQTT
// listener's Accept fails with EMFILE), checks /healthz says so, releases
// them, and then logs devices in and exchanges a message normally.
func TestAcceptSurvivesDescriptorExhaustion(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("needs /proc and RLIMIT_NOFILE")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), fdChildEnv+"="+t.TempDir())
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	t.Cleanup(func() {
		stdin.Close()
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("child: %v", err)
			}
		case <-time.After(testdevice.Wait):
			cmd.Process.Kill()
			t.Error("child did not stop")
		}
	})
	logs := make(chan string, 1000)
	stderrDone := make(chan struct{})
	go func() {
		defer close(stderrDone)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			select {
			case logs <- sc.Text():
			default:
			}
		}
		close(logs)
	}()
	var mqttAddr, httpAddr string
	var limit int
	if _, err := fmt.Fscanf(bufio.NewReader(stdout), "ready %s %s %d\n", &mqttAddr, &httpAddr, &limit); err != nil {
		t.Fatalf("child did not start: %v", err)
	}
	go func() {
		<-stderrDone // Wait closes the pipes: read them to the end first
		exited <- cmd.Wait()
	}()

	// One HTTP connection, kept alive, to read /healthz while no new socket
	// can be accepted.
	hc := &http.Client{Transport: &http.Transport{MaxConnsPerHost: 1}, Timeout: testdevice.Wait}
	t.Cleanup(hc.CloseIdleConnections)
	health := func() server.Health {
		t.Helper()
		resp, err := hc.Get("http://" + httpAddr + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var h server.Health
		if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
			t.Fatal(err)
		}
		return h
	}
	if h := health(); h.Status != "ok" {
		t.Fatalf("before: %+v", h)
	}

	// More idle sockets than the child has descriptors left: the rest wait
	// in the kernel's backlog while its Accept fails.
	var idle []net.Conn
	for range fdHeadroom + 8 {
		c, err := net.DialTimeout("tcp", mqttAddr, testdevice.Wait)
		if err != nil {
			t.Fatal(err)
		}
		idle = append(idle, c)
	}
	var failedAt time.Time
	deadline := time.After(testdevice.Wait)
	for found := false; !found; {
		select {
		case line, ok := <-logs:
			if !ok {
				t.Fatal("child exited")
			}
			found = strings.Contains(line, `msg="accept failed; retrying"`) && strings.Contains(line, "too many open files")
			if found {
				failedAt = time.Now()
				t.Logf("child: %s", line)
			}
		case <-deadline:
			t.Fatal("the child never logged a failed Accept; its listener may have stopped")
		}
	}
	// The listener retries (5 ms, 10 ms, 20 ms, ...) and says it is degraded.
	waitFor(t, "retried Accepts", func() bool { return health().Accept >= 4 })
	if h := health(); h.Status != "degraded" || strings.Join(h.Degraded, ",") != "tcp" {
		t.Fatalf("while exhausted: status %q, degraded %v, acceptErrors %d", h.Status, h.Degraded, h.Accept)
	}

	for _, c := range idle {
		c.Close()
	}
	url := "tcp://" + mqttAddr
	tok := func(u string) string {
		tk, err := auth.Mint(testserver.Secret, u, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return tk
	}
	bob := testdevice.ConnectV3(t, url, "bob", opts{Token: tok})
	alice := testdevice.ConnectV3(t, url, "alice", opts{Token: tok})
	alice.Send(`{"to":"bob","data":"after EMFILE"}`)
	if m := bob.Expect(protocol.InboxTopic("bob")).Message(t); string(m.Data) != `"after EMFILE"` {
		t.Fatalf("got %s", m.Data)
	}
	h := health()
	if h.Status != "ok" || len(h.Degraded) != 0 {
		t.Fatalf("after: status %q, degraded %v", h.Status, h.Degraded)
	}
	resp, err := hc.Get("http://" + httpAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), `imbridge_accept_errors_total{listener="tcp"} `) ||
		strings.Contains(string(body), `imbridge_accept_errors_total{listener="tcp"} 0`) {
		t.Fatal("/metrics does not count the accept errors")
	}
	// Errors are logged at a bounded rate: one line per 10 s at most.
	logged := time.Since(failedAt)
	bob.Close()
	alice.Close()
	stdin.Close()
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("child: %v", err)
		}
	case <-time.After(testdevice.Wait):
		t.Fatal("child did not stop")
	}
	exited <- nil
	lines, recovered := 0, 0
	for line := range logs {
		if strings.Contains(line, "accept failed") {
			lines++
		}
		if strings.Contains(line, `msg="accepting again" listener=tcp`) {
			recovered++
		}
	}
	if recovered != 1 {
		t.Errorf("%d lines say the listener accepts again, want 1", recovered)
	}
	t.Logf("limit %d descriptors, %d accept errors, %d more logged", limit, h.Accept, lines)
	if max := int(logged / (10 * time.Second)); lines > max {
		t.Fatalf("%d more lines of accept errors logged in %v, want at most one per 10 s", lines, logged)
	}
}
