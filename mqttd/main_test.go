package main

import (
	"bufio"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/imbridge/imbridge/auth"
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
	early     []string    // the log lines up to the ready line
	log       chan string // every later log line
}

var readyLine = regexp.MustCompile(`msg="mqttd ready" (?:node=\S+ )?mqtt=(\S+) ws=(\S+) http=(\S+)`)

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
				t.Fatalf("mqttd exited before it was ready:\n%s", strings.Join(p.early, "\n"))
			}
			p.early = append(p.early, line)
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
	// The log says that a secret was made, and where; never the secret.
	secret, _ := os.ReadFile(filepath.Join(data, "secret"))
	generated := `msg="generated a token secret" file=` + filepath.Join(data, "secret")
	if log := strings.Join(p.early, "\n"); !strings.Contains(log, generated) || strings.Contains(log, strings.TrimSpace(string(secret))) {
		t.Fatalf("first start's log does not say where the secret went, or holds it:\n%s", log)
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
	if log := strings.Join(p.early, "\n"); strings.Contains(log, "generated") || !strings.Contains(log, `msg="token secret" from=`+filepath.Join(data, "secret")) {
		t.Fatalf("second start's log:\n%s", log)
	}
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
		{"-mqtts", "127.0.0.1:0"}, {"-token-max-lifetime", "-1h"}, {"-wss", "127.0.0.1:0", "-tls-cert", "missing.pem", "-tls-key", "missing.key"}} {
		err := run(ctx, append(args, "-data", t.TempDir()), io.Discard, io.Discard)
		if err == nil {
			t.Errorf("mqttd %v: no error", args)
		}
	}
	secretFile := filepath.Join(t.TempDir(), "secret")
	os.WriteFile(secretFile, []byte("0123456789abcdef0123\n"), 0o600)
	if err := run(ctx, []string{"-secret", "0123456789abcdef", "-secret-file", secretFile, "-data", t.TempDir()}, io.Discard, io.Discard); err == nil ||
		!strings.Contains(err.Error(), "give one") {
		t.Errorf("-secret and -secret-file: %v", err)
	}
	t.Setenv("MQTTD_MAX_INFLIGHT", "lots")
	if _, err := parseFlags(nil, io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), "MQTTD_MAX_INFLIGHT") {
		t.Errorf("bad env number: %v", err)
	}
}

// mqttdIn runs the binary in dir with args and the environment cleared of
// MQTTD_ variables plus env, and returns its exit code, stdout and stderr.
func mqttdIn(t *testing.T, dir string, env []string, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Dir = dir
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "MQTTD_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	// The race runtime sleeps a second at exit by default: not for these.
	cmd.Env = append(append(cmd.Env, "GORACE=atexit_sleep_ms=0"), env...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatal(err)
	}
	return cmd.ProcessState.ExitCode(), stdout.String(), stderr.String()
}

// TestTokenNeverCreatesSecret runs mqttd token where there is no secret, as
// a newcomer would from another directory: it fails, names where it looked
// and how to point it, and creates nothing.
func TestTokenNeverCreatesSecret(t *testing.T) {
	elsewhere := t.TempDir()
	for _, args := range [][]string{{"token", "alice"}, {"token", "-data", "srv/data", "alice"}, {"token", "-admin", "ops"}} {
		code, stdout, stderr := mqttdIn(t, elsewhere, nil, args...)
		if code == 0 || stdout != "" {
			t.Fatalf("mqttd %v without a secret: exit %d, printed %q", args, code, stdout)
		}
		want := filepath.Join(elsewhere, "data", "secret")
		if args[1] == "-data" {
			want = filepath.Join(elsewhere, "srv", "data", "secret")
		}
		for _, hint := range []string{want, "-data DIR", "MQTTD_DATA", "-secret-file FILE", "MQTTD_SECRET_FILE", "-secret", "MQTTD_SECRET"} {
			if !strings.Contains(stderr, hint) {
				t.Errorf("mqttd %v: message lacks %q:\n%s", args, hint, stderr)
			}
		}
	}
	if entries, _ := os.ReadDir(elsewhere); len(entries) != 0 {
		t.Fatalf("mqttd token created %v", entries)
	}
}

// TestSecretFile: mqttd and mqttd token read the secret from -secret-file
// or MQTTD_SECRET_FILE, so it need not be on the command line, visible in
// ps; a device connects with the token so made.
func TestSecretFile(t *testing.T) {
	dir := t.TempDir()
	secretFile := filepath.Join(dir, "imbridge.secret")
	if err := os.WriteFile(secretFile, []byte("  file-secret-0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(dir, "data")
	p := start(t, []string{"MQTTD_MQTT=127.0.0.1:0", "MQTTD_WS=", "MQTTD_HTTP=127.0.0.1:0", "MQTTD_DATA=" + data,
		"MQTTD_SECRET=", "MQTTD_SECRET_FILE="}, "-secret-file", secretFile)
	if log := strings.Join(p.early, "\n"); !strings.Contains(log, `msg="token secret" from=`+secretFile) {
		t.Fatalf("log does not say where the secret is from:\n%s", log)
	}
	if _, err := os.Stat(filepath.Join(data, "secret")); !os.IsNotExist(err) {
		t.Fatalf("mqttd generated a secret although given one: %v", err)
	}
	tok := func(user string) string {
		code, stdout, stderr := mqttdIn(t, t.TempDir(), []string{"MQTTD_SECRET_FILE=" + secretFile}, "token", user)
		if code != 0 {
			t.Fatalf("mqttd token with MQTTD_SECRET_FILE: exit %d: %s", code, stderr)
		}
		return strings.TrimSpace(stdout)
	}
	bob := testdevice.ConnectV3(t, "tcp://"+p.mqtt, "bob", testdevice.Options{Token: tok})
	bob.Close()
	code, _, stderr := mqttdIn(t, dir, []string{"MQTTD_SECRET=" + strings.Repeat("s", 16)}, "token", "-secret-file", secretFile, "bob")
	if code == 0 || !strings.Contains(stderr, "give one") {
		t.Fatalf("-secret-file with MQTTD_SECRET: exit %d: %s", code, stderr)
	}
	p.stop(t)
}

// TestHelp: -h and -help print the usage to stdout and exit 0, for mqttd
// and mqttd token; the usage says why -secret-file is there. A bad flag
// still exits 2.
func TestHelp(t *testing.T) {
	for _, args := range [][]string{{"-h"}, {"-help"}, {"token", "-h"}, {"token", "-help"}} {
		code, stdout, _ := mqttdIn(t, t.TempDir(), nil, args...)
		if code != 0 || !strings.Contains(stdout, "Usage: mqttd") || !strings.Contains(stdout, "-secret-file") ||
			!strings.Contains(stdout, "in ps") {
			t.Errorf("mqttd %v: exit %d, stdout:\n%s", args, code, stdout)
		}
	}
	for _, args := range [][]string{{"-nope"}, {"token", "-nope", "alice"}} {
		if code, _, stderr := mqttdIn(t, t.TempDir(), nil, args...); code != 2 || !strings.Contains(stderr, "Usage: mqttd") {
			t.Errorf("mqttd %v: exit %d, stderr:\n%s", args, code, stderr)
		}
	}
}

// TestTokenChecks: a node started with -token-audience and
// -token-max-lifetime refuses a device whose token lacks the audience or
// lives too long, and accepts one minted with mqttd token -audience within
// the lifetime.
func TestTokenChecks(t *testing.T) {
	secretFile := filepath.Join(t.TempDir(), "secret")
	os.WriteFile(secretFile, []byte("checks-secret-0123456789"), 0o600)
	p := start(t, []string{"MQTTD_MQTT=127.0.0.1:0", "MQTTD_WS=", "MQTTD_HTTP=", "MQTTD_DATA=" + t.TempDir(),
		"MQTTD_SECRET=", "MQTTD_SECRET_FILE=" + secretFile, "MQTTD_TOKEN_AUDIENCE=chat", "MQTTD_TOKEN_MAX_LIFETIME=24h"})
	mint := func(args ...string) string {
		code, stdout, stderr := mqttdIn(t, t.TempDir(), []string{"MQTTD_SECRET_FILE=" + secretFile}, append(append([]string{"token"}, args...), "bob")...)
		if code != 0 {
			t.Fatalf("mqttd token %v: %s", args, stderr)
		}
		return strings.TrimSpace(stdout)
	}
	for _, tc := range []struct {
		args []string
		want byte // CONNACK return code
	}{
		{[]string{"-audience", "chat"}, 0},
		{nil, 5},
		{[]string{"-audience", "billing"}, 5},
		{[]string{"-audience", "chat", "-ttl", "48h"}, 5},
	} {
		code, err := testdevice.RawConnectCode(p.mqtt, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect},
			ProtocolVersion: 4, Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), ClientIdentifier: "phone", Clean: true,
				UsernameFlag: true, Username: []byte("bob"), PasswordFlag: true, Password: []byte(mint(tc.args...))}})
		if err != nil || code != tc.want {
			t.Errorf("token %v: CONNACK %d, %v; want %d", tc.args, code, err, tc.want)
		}
	}
	p.stop(t)
}

// TestTokenAudience: mqttd token -audience (or MQTTD_TOKEN_AUDIENCE, the
// variable of mqttd -token-audience) mints tokens a verifier requiring that
// audience accepts; without it, such a verifier refuses them.
func TestTokenAudience(t *testing.T) {
	secretFile := filepath.Join(t.TempDir(), "secret")
	secret := "audience-secret-0123456789"
	os.WriteFile(secretFile, []byte(secret), 0o600)
	v, err := auth.NewVerifier([]byte(secret), auth.VerifierOptions{Audience: "chat"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		env  []string
		args []string
		ok   bool
	}{
		{nil, []string{"-audience", "chat"}, true},
		{[]string{"MQTTD_TOKEN_AUDIENCE=chat"}, nil, true},
		{[]string{"MQTTD_TOKEN_AUDIENCE=chat"}, []string{"-admin"}, true},
		{nil, nil, false},
		{nil, []string{"-audience", "billing"}, false},
	} {
		args := append(append([]string{"token", "-secret-file", secretFile}, tc.args...), "alice")
		code, stdout, stderr := mqttdIn(t, t.TempDir(), tc.env, args...)
		if code != 0 {
			t.Fatalf("%v %v: exit %d: %s", tc.env, args, code, stderr)
		}
		if _, err := v.Verify(strings.TrimSpace(stdout)); (err == nil) != tc.ok {
			t.Errorf("%v %v: verify with audience chat: %v, want accepted %v", tc.env, args, err, tc.ok)
		}
	}
}
