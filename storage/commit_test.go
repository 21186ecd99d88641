package storage

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/imbridge/imbridge/protocol"
)

// checkFor polls cond every millisecond until it holds, failing the test
// after total.
func checkFor(t testing.TB, total time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(total)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", total, what)
		}
		time.Sleep(time.Millisecond)
	}
}

// heldWriter is a store whose writer goroutine can be held inside OnCommit,
// so that a test can queue appends that will then share one commit.
type heldWriter struct {
	*Bolt
	entered chan struct{} // receives when OnCommit is entered while holding
	release chan struct{} // closed to let the held OnCommit return
	mu      sync.Mutex    // guards holding and committed
	holding bool
	seen    [][]Appended // every OnCommit call's appends
}

func openHeld(t *testing.T, opts Options) *heldWriter {
	t.Helper()
	h := &heldWriter{entered: make(chan struct{}, 1), release: make(chan struct{})}
	opts.OnCommit = func(a []Appended) {
		h.mu.Lock()
		h.seen = append(h.seen, a)
		hold := h.holding
		h.holding = false
		h.mu.Unlock()
		if hold {
			h.entered <- struct{}{}
			<-h.release
		}
	}
	h.Bolt, _ = openTemp(t, &opts)
	return h
}

// hold makes the next commit's OnCommit wait for release, appending m to
// get there, and returns once the writer is held.
func (h *heldWriter) hold(t *testing.T, m protocol.Message) {
	t.Helper()
	h.mu.Lock()
	h.holding = true
	h.mu.Unlock()
	go h.Append(context.Background(), m) // returns before or after release, as the code under test decides
	select {
	case <-h.entered:
	case <-time.After(5 * time.Second):
		t.Fatal("the writer never called OnCommit")
	}
}

// appendAll starts an Append for each of ms, in order, each once the one
// before is queued behind the held writer, then releases it and returns the
// results.
func (h *heldWriter) appendAll(t *testing.T, ms []protocol.Message) ([]Appended, []error) {
	t.Helper()
	res, errs := make([]Appended, len(ms)), make([]error, len(ms))
	var wg sync.WaitGroup
	for i, m := range ms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			res[i], errs[i] = h.Append(ctx, m)
		}()
		checkFor(t, 5*time.Second, "append not queued", func() bool { return h.Stats().Queued == i+1 })
	}
	close(h.release)
	wg.Wait()
	return res, errs
}

// TestBadAppendFailsOnlyItself: one append that makes its commit fail (a key
// over bbolt's limit) fails alone; the other appends queued with it are
// stored, together in one commit, and OnCommit sees exactly them.
func TestBadAppendFailsOnlyItself(t *testing.T) {
	h := openHeld(t, Options{})
	h.hold(t, msg("alice", "bob", "", 0))
	before := h.Stats()
	huge := strings.Repeat("x", 40_000) // ConversationKey over bbolt's 32 KiB key limit
	var ms []protocol.Message
	for i := range 8 {
		if i == 3 {
			ms = append(ms, msg(huge, "bob", "bad", i))
			continue
		}
		ms = append(ms, msg(fmt.Sprintf("u%d", i), "bob", fmt.Sprintf("c%d", i), i))
	}
	res, errs := h.appendAll(t, ms)
	for i := range ms {
		switch {
		case i == 3 && errs[i] == nil:
			t.Errorf("the bad append succeeded: %+v", res[i])
		case i != 3 && errs[i] != nil:
			t.Errorf("append %d failed with the bad one: %v", i, errs[i])
		case i != 3 && res[i].Message.Seq != 1:
			t.Errorf("append %d: %+v", i, res[i])
		}
	}
	after := h.Stats()
	if after.Commits-before.Commits != 1 || after.Appended-before.Appended != 7 {
		t.Errorf("the 7 good appends took %d commits (%d appends), want 1 (7)", after.Commits-before.Commits, after.Appended-before.Appended)
	}
	p, _ := h.Sync("bob", HistoryFilter{Limit: 100})
	if len(p.Messages) != 8 { // the held one and the 7 good ones
		t.Errorf("bob's inbox has %d messages, want 8", len(p.Messages))
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if n := len(h.seen); n != 2 || len(h.seen[1]) != 7 {
		t.Errorf("OnCommit calls: %d, last with %d appends; want 2, 7", n, len(h.seen[n-1]))
	}
}

// TestOnCommitRunsAfterSendersAreReleased: a slow OnCommit (the bridge's
// fan-out channel full) does not hold up the Append calls of its commit.
func TestOnCommitRunsAfterSendersAreReleased(t *testing.T) {
	entered, release := make(chan struct{}), make(chan struct{})
	s, _ := openTemp(t, &Options{OnCommit: func([]Appended) {
		select {
		case entered <- struct{}{}:
			<-release
		default:
		}
	}})
	defer close(release)
	done := make(chan error, 1)
	go func() {
		_, err := s.Append(context.Background(), msg("alice", "bob", "", 1))
		done <- err
	}()
	select {
	case <-entered:
	case <-time.After(5 * time.Second):
		t.Fatal("OnCommit not called")
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Append still waits for OnCommit to return")
	}
}

// TestCommitErrorReachesEveryAppend: when every commit fails (the file is
// closed under the writer), each append of the batch gets the error, none
// hangs, and OnCommit is not called.
func TestCommitErrorReachesEveryAppend(t *testing.T) {
	h := openHeld(t, Options{})
	h.hold(t, msg("alice", "bob", "", 0))
	// Make every further commit fail, whatever its appends: close the bbolt
	// file under the writer.
	ms := []protocol.Message{msg("a", "b", "", 1), msg("c", "d", "", 2), msg("e", "f", "", 3)}
	res, errs := make([]Appended, len(ms)), make([]error, len(ms))
	var wg sync.WaitGroup
	for i, m := range ms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res[i], errs[i] = h.Append(context.Background(), m)
		}()
	}
	checkFor(t, 5*time.Second, "appends not queued", func() bool { return h.Stats().Queued == len(ms) })
	closed := make(chan error, 1)
	go func() { closed <- h.db.Close() }() // waits for no write: the writer is outside a transaction
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	close(h.release)
	wg.Wait()
	for i := range ms {
		if errs[i] == nil || errors.Is(errs[i], ErrQuotaExceeded) {
			t.Errorf("append %d: %+v %v, want the commit's error", i, res[i], errs[i])
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.seen) != 1 {
		t.Errorf("OnCommit called %d times, want once (for the held append)", len(h.seen))
	}
}
