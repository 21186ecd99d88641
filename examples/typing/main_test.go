package main

import (
	"bufio"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/imbridge/imbridge/internal/testserver"
)

// TestTypingDemo runs the demo as two processes against a real node: the
// reader shows the indicator, then the message, then (after a line that is
// typed but never sent) clears the indicator on its own.
func TestTypingDemo(t *testing.T) {
	n := testserver.Start(t)
	bin := filepath.Join(t.TempDir(), "typing")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	reader := exec.Command(bin, "-broker", n.MQTTURL(), "-user", "bob", "-peer", "alice", "-token", n.Token("bob"), "-expire", "300ms")
	out, _ := reader.StdoutPipe()
	if err := reader.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reader.Process.Kill(); reader.Wait() })
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	var seen []string
	expect := func(want string) {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("reader exited before %q; it printed %q", want, seen)
				}
				seen = append(seen, l)
				if strings.Contains(l, want) {
					return
				}
			case <-deadline:
				t.Fatalf("reader did not print %q; it printed %q", want, seen)
			}
		}
	}
	expect("waiting for alice")

	typeIn := func(input string) {
		t.Helper()
		typist := exec.Command(bin, "-broker", n.MQTTURL(), "-user", "alice", "-peer", "bob", "-type", "-token", n.Token("alice"))
		typist.Stdin = strings.NewReader(input)
		typist.Stdout = io.Discard
		typist.Stderr = os.Stderr
		if err := typist.Run(); err != nil {
			t.Fatal(err)
		}
	}
	typeIn("hello bob\n")
	expect("alice is typing…")
	expect("alice: hello bob")
	// Typed, never sent: the indicator shows, then clears on its own. (Run
	// apart from the line above: the online-only indicator and the stored
	// message travel separately and may arrive in either order.)
	typeIn("still typ")
	expect("alice is typing…")
	expect("(alice stopped typing)")
	if got := n.Health().Bridge.Delivered; got != 2 {
		t.Fatalf("online-only deliveries = %d, want 2", got)
	}
}
