package storagetest

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/imbridge/imbridge/internal/poll"
	"github.com/imbridge/imbridge/protocol"
	"github.com/imbridge/imbridge/storage"
)

// Held is a store whose writer goroutine can be held inside OnCommit, so
// that a test can queue appends that will then share one commit.
type Held struct {
	storage.Store
	entered chan struct{} // receives when OnCommit is entered while holding
	release chan struct{} // closed to let the held OnCommit return
	mu      sync.Mutex    // guards holding and seen
	holding bool
	seen    [][]storage.Appended // every OnCommit call's appends
}

// OpenHeld opens a store with open, with an OnCommit that Hold can stop.
func OpenHeld(t *testing.T, open Opener, o storage.Options) *Held {
	t.Helper()
	h := &Held{entered: make(chan struct{}, 1), release: make(chan struct{})}
	o.OnCommit = func(a []storage.Appended) {
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
	h.Store = open(t, &o)
	return h
}

// Hold makes the next commit's OnCommit wait for Release, appending m to get
// there, and returns once the writer is held.
func (h *Held) Hold(t *testing.T, m protocol.Message) {
	t.Helper()
	h.mu.Lock()
	h.holding = true
	h.mu.Unlock()
	go h.Append(context.Background(), m) // returns before or after release, as the code under test decides
	select {
	case <-h.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the writer never called OnCommit")
	}
}

// Release lets the held OnCommit return.
func (h *Held) Release() { close(h.release) }

// Seen returns the appends of every OnCommit call so far.
func (h *Held) Seen() [][]storage.Appended {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([][]storage.Appended(nil), h.seen...)
}

// AppendAll starts an Append for each of ms, in order, each once the one
// before is queued behind the held writer, then releases it and returns the
// results.
func (h *Held) AppendAll(t *testing.T, ms []protocol.Message) ([]storage.Appended, []error) {
	t.Helper()
	wait := h.Queue(t, ms)
	h.Release()
	return wait()
}

// Queue starts an Append for each of ms, in order, each once the one before
// is queued behind the held writer, and returns a function that waits for
// their results.
func (h *Held) Queue(t *testing.T, ms []protocol.Message) (wait func() ([]storage.Appended, []error)) {
	t.Helper()
	res, errs := make([]storage.Appended, len(ms)), make([]error, len(ms))
	var wg sync.WaitGroup
	for i, m := range ms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			res[i], errs[i] = h.Append(ctx, m)
		}()
		h.WaitQueued(t, i+1)
	}
	return func() ([]storage.Appended, []error) {
		wg.Wait()
		return res, errs
	}
}

// WaitQueued waits until n appends are queued behind the writer.
func (h *Held) WaitQueued(t *testing.T, n int) {
	t.Helper()
	poll.For(t, poll.Total, time.Millisecond, func() error {
		if q := h.Stats().Queued; q != n {
			return fmt.Errorf("%d appends queued, want %d", q, n)
		}
		return nil
	})
}
