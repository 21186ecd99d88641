package main

import (
	"bufio"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/imbridge/imbridge/internal/testdevice"
	"github.com/imbridge/imbridge/protocol"
	"github.com/imbridge/imbridge/storage"
)

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "mqttd-test")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "mqttd")
	if out, err := exec.Command("go", "build", "-race", "-o", binary, ".").CombinedOutput(); err != nil {
		// -race needs cgo; fall back to a plain build.
		if out2, err2 := exec.Command("go", "build", "-o", binary, ".").CombinedOutput(); err2 != nil {
			panic(string(out) + string(out2))
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// proc is a running mqttd.
type proc struct {
	cmd       *exec.Cmd
	mqtt, web string
	log       chan string // every log line
}

var readyLine = regexp.MustCompile(`msg="mqttd ready" mqtt=(\S+) ws=(\S+) http=(\S+)`)

// start runs mqttd with env and args and waits for its ready line.
func start(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = append(os.Environ(), env...)
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, log: make(chan string, 1000)}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			select {
			case p.log <- sc.Text():
			default:
			}
		}
		close(p.log)
	}()
	deadline := time.After(testdevice.Wait)
	for {
		select {
		case line, ok := <-p.log:
			if !ok {
				t.Fatal("mqttd exited before it was ready")
			}
			if m := readyLine.FindStringSubmatch(line); m != nil {
				p.mqtt, p.web = m[1], m[3]
				return p
			}
		case <-deadline:
			t.Fatal("mqttd not ready in time")
		}
	}
}

// stop sends SIGTERM and waits for a clean exit.
func (p *proc) stop(t *testing.T) {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- p.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("mqttd exit: %v", err)
		}
	case <-time.After(testdevice.Wait):
		t.Fatal("mqttd did not stop on SIGTERM")
	}
}

func token(t *testing.T, data, user string, extra ...string) string {
	t.Helper()
	out, err := exec.Command(binary, append([]string{"token", "-data", data, user}, extra...)...).Output()
	if err != nil {
		t.Fatalf("mqttd token: %v", err)
	}
	return strings.TrimSpace(string(out))
}

// TestBinaryEndToEnd runs the binary configured by environment variables,
// sends through it, stops it with SIGTERM, starts it again on the same data
// directory and reads the message back.
func TestBinaryEndToEnd(t *testing.T) {
	data := t.TempDir()
	env := []string{"MQTTD_MQTT=127.0.0.1:0", "MQTTD_WS=127.0.0.1:0", "MQTTD_HTTP=127.0.0.1:0", "MQTTD_DATA=" + data, "MQTTD_SECRET="}
	p := start(t, env)
	st, err := os.Stat(filepath.Join(data, "secret"))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("secret file: %v %v", st, err)
	}
	tok := func(user string) string { return token(t, data, user) }
	bob := testdevice.ConnectV3(t, "tcp://"+p.mqtt, "bob", testdevice.Options{Token: tok})
	alice := testdevice.ConnectV3(t, "tcp://"+p.mqtt, "alice", testdevice.Options{Token: tok})
	alice.Send(`{"to":"bob","data":"through the binary"}`)
	bob.Expect(protocol.InboxTopic("bob"))
	bob.Close()
	alice.Close()
	p.stop(t)

	p = start(t, env)
	bob = testdevice.ConnectV3(t, "tcp://"+p.mqtt, "bob", testdevice.Options{Token: tok})
	bob.Publish(protocol.SyncTopic("bob"), 1, `{"after":0}`)
	page := bob.Expect(protocol.ReplyTopic("bob")).Page(t)
	if len(page.Messages) != 1 || string(page.Messages[0].Data) != `"through the binary"` {
		t.Fatalf("after restart: %+v", page)
	}
	p.stop(t)
	if err := storage.Verify(filepath.Join(data, "history.db"), time.Second); err != nil {
		t.Fatalf("history after SIGTERM: %v", err)
	}
}

// TestFlags checks flag errors and help.
func TestFlags(t *testing.T) {
	ctx := context.Background()
	for _, args := range [][]string{{"-nope"}, {"extra-arg"}, {"-log", "loud"}, {"-secret", "short"}, {"token"}, {"token", "not a user"},
		{"-mqtts", "127.0.0.1:0"}, {"-wss", "127.0.0.1:0", "-tls-cert", "missing.pem", "-tls-key", "missing.key"}} {
		err := run(ctx, append(args, "-data", t.TempDir()), io.Discard, io.Discard)
		if err == nil {
			t.Errorf("mqttd %v: no error", args)
		}
	}
	t.Setenv("MQTTD_MAX_INFLIGHT", "lots")
	if _, err := parseFlags(nil, io.Discard); err == nil || !strings.Contains(err.Error(), "MQTTD_MAX_INFLIGHT") {
		t.Errorf("bad env number: %v", err)
	}
}
