package storage

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/imbridge/imbridge/protocol"
)

// fillConversations stores one message, dated at, in each of n new
// conversations (prefix+"a"+i with prefix+"b"+i), through the store's own
// apply, 10,000 to a transaction: a large history in seconds.
func fillConversations(tb testing.TB, s *Bolt, prefix string, n int, at time.Time) {
	tb.Helper()
	for lo := 0; lo < n; lo += 10_000 {
		err := s.db.Update(func(tx *bolt.Tx) error {
			for i := lo; i < min(lo+10_000, n); i++ {
				m := msg(fmt.Sprintf("%sa%d", prefix, i), fmt.Sprintf("%sb%d", prefix, i), "", i)
				m.Time = at.UnixMilli()
				r := &Request{Msg: m, Enc: protocol.AppendMessage(nil, &m)}
				if err := s.apply(tx, r); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			tb.Fatal(err)
		}
	}
}

// countKeys returns the number of keys in each of the named buckets.
func countKeys(t *testing.T, s *Bolt, buckets ...[]byte) (n []int) {
	t.Helper()
	s.db.View(func(tx *bolt.Tx) error {
		for _, b := range buckets {
			n = append(n, tx.Bucket(b).Stats().KeyN)
		}
		return nil
	})
	return n
}

// TestPruneAcrossSteps: a pass longer than one step (3,500 conversations,
// one of them with 2,500 messages to remove) removes exactly what the
// retention says, with the inbox entries, retry records and byte counts.
func TestPruneAcrossSteps(t *testing.T) {
	s, _ := openTemp(t, nil)
	now := time.Now()
	fillConversations(t, s, "old", 3000, now.Add(-2*time.Hour))
	fillConversations(t, s, "new", 500, now)
	ctx := context.Background()
	var big []protocol.Message
	for i := range 2501 {
		m := msg("big", "bigger", fmt.Sprint("c", i), i)
		m.Time = now.Add(-2 * time.Hour).UnixMilli()
		if i == 2500 {
			m.Time = now.UnixMilli()
		}
		big = append(big, m)
	}
	h := &Request{}
	s.db.Update(func(tx *bolt.Tx) error {
		for _, m := range big {
			*h = Request{Msg: m, Enc: protocol.AppendMessage(nil, &m)}
			if err := s.apply(tx, h); err != nil {
				return err
			}
		}
		return nil
	})
	steps := 0
	s.pruneStep = func() { steps++ }
	n, err := s.Prune(ctx, Retention{MaxAge: time.Hour}, now)
	if err != nil || n != 5500 {
		t.Fatalf("pruned %d (%v), want 5500", n, err)
	}
	if steps < 5 {
		t.Fatalf("a pass of %d steps: the test does not cross step boundaries", steps)
	}
	if got := countKeys(t, s, bucketMsg, bucketInbox, bucketDedupe); fmt.Sprint(got) != "[501 1002 1]" {
		t.Fatalf("messages, inbox entries, retry records = %v, want [501 1002 1]", got)
	}
	if b := storedBytes(t, s, "big"); b != uint64(len(h.Res.Encoded)) {
		t.Fatalf("big stores %d bytes, want %d (its one kept message)", b, len(h.Res.Encoded))
	}
	if b := storedBytes(t, s, "olda7"); b != 0 {
		t.Fatalf("olda7 stores %d bytes after all its messages were pruned", b)
	}
	p, _ := s.Sync("bigger", HistoryFilter{Limit: 10})
	if len(p.Messages) != 1 || p.Messages[0].InboxSeq != 2501 {
		t.Fatalf("bigger's inbox: %+v", p.Messages)
	}
}

// TestCloseStopsARunningPrune: Close, called while a prune is between two
// steps of a pass, makes it return ErrClosed without finishing the pass.
func TestCloseStopsARunningPrune(t *testing.T) {
	s, _ := openTemp(t, nil)
	now := time.Now()
	fillConversations(t, s, "", 5000, now) // nothing to prune: a pass of 5 steps
	running := make(chan struct{})
	steps := 0
	s.pruneStep = func() {
		if steps++; steps == 3 {
			close(running)
			<-s.life.Done() // until Close has begun
		}
	}
	type result struct {
		n   int
		err error
	}
	done := make(chan result, 1)
	go func() {
		n, err := s.Prune(context.Background(), Retention{MaxAge: time.Hour}, now)
		done <- result{n, err}
	}()
	<-running
	start := time.Now()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	t.Logf("Close took %v with a prune running", time.Since(start))
	r := <-done
	if !errors.Is(r.err, ErrClosed) || steps != 3 {
		t.Fatalf("prune returned %d, %v after %d steps; want ErrClosed after 3", r.n, r.err, steps)
	}
	if _, err := s.Prune(context.Background(), Retention{MaxAge: time.Hour}, now); !errors.Is(err, ErrClosed) {
		t.Fatalf("prune after close: %v", err)
	}
}

// TestPruneHonoursContext: a prune stops at the next step once its context
// ends, and one called with an ended context removes nothing.
func TestPruneHonoursContext(t *testing.T) {
	s, _ := openTemp(t, nil)
	now := time.Now()
	fillConversations(t, s, "", 5000, now.Add(-2*time.Hour))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if n, err := s.Prune(ctx, Retention{MaxAge: time.Hour}, now); n != 0 || !errors.Is(err, context.Canceled) {
		t.Fatalf("prune with an ended context: %d %v", n, err)
	}
	ctx, cancel = context.WithCancel(context.Background())
	steps := 0
	s.pruneStep = func() {
		if steps++; steps == 3 {
			cancel()
		}
	}
	n, err := s.Prune(ctx, Retention{MaxAge: time.Hour}, now)
	if !errors.Is(err, context.Canceled) || n != 2000 {
		t.Fatalf("prune cancelled before its third step: %d %v, want the first two steps' 2000", n, err)
	}
	if got := countKeys(t, s, bucketMsg); got[0] != 3000 {
		t.Fatalf("%d messages left, want 3000", got[0])
	}
}

// TestAppendsProceedDuringPrune: appends issued while a prune pass over
// 50,000 conversations with nothing to remove runs are committed before the
// pass ends, instead of waiting for it. It reports (does not assert) the
// append latencies.
func TestAppendsProceedDuringPrune(t *testing.T) {
	if testing.Short() {
		t.Skip("builds 50,000 conversations")
	}
	s, _ := openTemp(t, nil)
	now := time.Now()
	fillConversations(t, s, "", 50_000, now)
	var mu sync.Mutex // guards spans
	var spans [][2]time.Time
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			start := time.Now()
			if _, err := s.Append(context.Background(), msg("x", "y", "", i)); err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			spans = append(spans, [2]time.Time{start, time.Now()})
			mu.Unlock()
		}
	}()
	t0 := time.Now()
	if _, err := s.Prune(context.Background(), Retention{MaxAge: time.Hour}, now); err != nil {
		t.Fatal(err)
	}
	t1 := time.Now()
	close(stop)
	wg.Wait()
	var during []time.Duration
	for _, sp := range spans {
		if !sp[0].Before(t0) && sp[1].Before(t1) {
			during = append(during, sp[1].Sub(sp[0]))
		}
	}
	slices.Sort(during)
	if len(during) > 0 {
		t.Logf("prune pass %v; %d appends within it: median %v, max %v", t1.Sub(t0), len(during), during[len(during)/2], during[len(during)-1])
	}
	if len(during) < 3 {
		t.Fatalf("%d appends committed during a %v prune pass: appends wait for the pass", len(during), t1.Sub(t0))
	}
}
