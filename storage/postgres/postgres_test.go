package postgres

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/imbridge/imbridge/internal/poll"
	"github.com/imbridge/imbridge/internal/testpg"
	"github.com/imbridge/imbridge/protocol"
	"github.com/imbridge/imbridge/storage"
	"github.com/imbridge/imbridge/storage/storagetest"
)

// openOn returns an Opener of stores on new databases of srv.
func openOn(srv *testpg.Server) storagetest.Opener {
	return func(t *testing.T, o *storage.Options) storage.Store {
		t.Helper()
		return open(t, srv.NewDB(t), o)
	}
}

// open opens a store on dsn, closed at t's cleanup.
func open(t *testing.T, dsn string, o *storage.Options) *Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	s, err := Open(ctx, dsn, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return s
}

// TestConformance runs the backend-independent cases against PostgreSQL.
func TestConformance(t *testing.T) {
	storagetest.Run(t, openOn(testpg.Start(t)))
}

// TestTwoNodes: two Stores on one database (two nodes), 8 senders each, all
// writing to one receiver: its inboxSeq is exactly 1..N, each once; both
// users of a conversation see the same seqs; the same (sender, id) sent on
// both stores at once is stored once.
func TestTwoNodes(t *testing.T) {
	srv := testpg.Start(t)
	dsn := srv.NewDB(t)
	a, b := open(t, dsn, nil), open(t, dsn, nil)
	if a.Epoch() != b.Epoch() {
		t.Fatalf("epochs %q and %q of one database", a.Epoch(), b.Epoch())
	}
	const senders, each = 8, 40
	type sent struct {
		res storage.Appended
		err error
	}
	results := make([][]sent, 2*senders)
	var wg sync.WaitGroup
	for i := range 2 * senders {
		node := []*Store{a, b}[i%2]
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range each {
				// Sender u(i/2) sends on both nodes; each id twice, once per node.
				m := storagetest.Msg(fmt.Sprintf("u%d", i/2), "hub", fmt.Sprintf("%d", j), j)
				res, err := node.Append(context.Background(), m)
				results[i] = append(results[i], sent{res, err})
			}
		}()
	}
	wg.Wait()
	fresh := 0
	for i, rs := range results {
		for j, r := range rs {
			if r.err != nil {
				t.Fatalf("sender %d append %d: %v", i, j, r.err)
			}
			other := results[i^1][j].res // the same (sender, id) on the other node
			if r.res.Message.Seq != other.Message.Seq || r.res.ToInboxSeq != other.ToInboxSeq || r.res.Duplicate == other.Duplicate {
				t.Fatalf("(u%d, %d) on both nodes: %+v and %+v, want one stored, one duplicate", i/2, j, r.res, other)
			}
			if !r.res.Duplicate {
				fresh++
			}
		}
	}
	if fresh != senders*each {
		t.Fatalf("%d stored, want %d", fresh, senders*each)
	}
	inbox := storagetest.SyncAll(t, b, "hub", protocol.MaxPageLimit)
	if len(inbox) != senders*each {
		t.Fatalf("hub's inbox holds %d, want %d", len(inbox), senders*each)
	}
	for i, s := range inbox {
		if s != uint64(i+1) {
			t.Fatalf("hub's inbox: inboxSeq %d at position %d", s, i)
		}
	}
	for u := range senders {
		ha, _ := a.History("hub", fmt.Sprint("u", u), storage.HistoryFilter{Limit: protocol.MaxPageLimit})
		hb, _ := b.History(fmt.Sprint("u", u), "hub", storage.HistoryFilter{Limit: protocol.MaxPageLimit})
		if len(ha.Messages) != each || fmt.Sprint(ha.Messages) != fmt.Sprint(hb.Messages) {
			t.Fatalf("u%d|hub: %d messages on a, %d on b, or different", u, len(ha.Messages), len(hb.Messages))
		}
		for k, m := range ha.Messages {
			if m.Seq != uint64(k+1) {
				t.Fatalf("u%d|hub: seq %d at position %d", u, m.Seq, k)
			}
		}
	}
	t.Logf("node a: %+v, node b: %+v", a.Stats(), b.Stats())
}

// TestPruneRunsOnce: while one node's prune holds the cluster's prune lock,
// another node's Prune returns 0 at once; after it, the other node prunes.
func TestPruneRunsOnce(t *testing.T) {
	srv := testpg.Start(t)
	dsn := srv.NewDB(t)
	a, b := open(t, dsn, nil), open(t, dsn, nil)
	now := time.Now()
	for i := range 3 {
		m := storagetest.Msg("alice", "bob", "", i)
		m.Time = now.Add(-2 * time.Hour).UnixMilli()
		if _, err := a.Append(context.Background(), m); err != nil {
			t.Fatal(err)
		}
	}
	inside, release := make(chan struct{}), make(chan struct{})
	a.pruneStep = func() {
		close(inside)
		<-release
	}
	type result struct {
		n   int
		err error
	}
	done := make(chan result, 1)
	go func() {
		n, err := a.Prune(context.Background(), storage.Retention{MaxAge: time.Hour}, now)
		done <- result{n, err}
	}()
	<-inside
	if n, err := b.Prune(context.Background(), storage.Retention{MaxAge: time.Hour}, now); n != 0 || err != nil {
		t.Fatalf("second node pruned %d, %v while the first held the lock", n, err)
	}
	close(release)
	if r := <-done; r.n != 3 || r.err != nil {
		t.Fatalf("first node pruned %d, %v; want 3", r.n, r.err)
	}
	m := storagetest.Msg("alice", "bob", "", 9)
	m.Time = now.Add(-2 * time.Hour).UnixMilli()
	if _, err := a.Append(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	if n, err := b.Prune(context.Background(), storage.Retention{MaxAge: time.Hour}, now); n != 1 || err != nil {
		t.Fatalf("second node, after the first: pruned %d, %v; want 1", n, err)
	}
}

// TestRestart: while PostgreSQL is stopped, Append fails at once with
// ErrUnavailable (no hang); once it is started again on the same port, the
// same Store works again, with no hole in the sequences.
func TestRestart(t *testing.T) {
	srv := testpg.Start(t)
	s := open(t, srv.NewDB(t), nil)
	ctx := context.Background()
	if _, err := s.Append(ctx, storagetest.Msg("alice", "bob", "c1", 1)); err != nil {
		t.Fatal(err)
	}
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	actx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := s.Append(actx, storagetest.Msg("alice", "bob", "c2", 2)); !errors.Is(err, storage.ErrUnavailable) {
		t.Fatalf("append while PostgreSQL is down: %v, want ErrUnavailable", err)
	}
	if _, err := s.History("alice", "bob", storage.HistoryFilter{Limit: 1}); !errors.Is(err, storage.ErrUnavailable) {
		t.Fatalf("history while PostgreSQL is down: %v, want ErrUnavailable", err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	var a storage.Appended
	poll.For(t, poll.Total, 50*time.Millisecond, func() (err error) {
		a, err = s.Append(ctx, storagetest.Msg("alice", "bob", "c2", 2))
		return err
	})
	if a.Message.Seq != 2 || a.Duplicate {
		t.Fatalf("after the restart: %+v, want seq 2", a)
	}
}

// TestOpenUnreachable: Open against a port nobody listens on fails with
// ErrUnavailable and a message naming the server.
func TestOpenUnreachable(t *testing.T) {
	dsn, addr := testpg.UnreachableDSN(t)
	_, err := Open(context.Background(), dsn, nil)
	if !errors.Is(err, storage.ErrUnavailable) || !strings.Contains(err.Error(), addr[strings.LastIndex(addr, ":")+1:]) {
		t.Fatalf("open: %v, want ErrUnavailable naming the port", err)
	}
	t.Log(err)
	if _, err := Open(context.Background(), "postgres://%zz", nil); err == nil || errors.Is(err, storage.ErrUnavailable) {
		t.Fatalf("open of a bad DSN: %v", err)
	}
}

// TestMigrationsOnce: several nodes opening a new database at once apply
// the schema once and agree on the epoch.
func TestMigrationsOnce(t *testing.T) {
	srv := testpg.Start(t)
	dsn := srv.NewDB(t)
	stores := make([]*Store, 4)
	errs := make([]error, 4)
	var wg sync.WaitGroup
	for i := range stores {
		wg.Add(1)
		go func() {
			defer wg.Done()
			stores[i], errs[i] = Open(context.Background(), dsn, nil)
		}()
	}
	wg.Wait()
	for i, s := range stores {
		if errs[i] != nil {
			t.Fatalf("open %d: %v", i, errs[i])
		}
		defer s.Close()
		if s.Epoch() != stores[0].Epoch() {
			t.Fatalf("epochs %q and %q", s.Epoch(), stores[0].Epoch())
		}
	}
	var versions int
	if err := stores[0].pool.QueryRow(context.Background(), `SELECT count(*) FROM schema_migrations`).Scan(&versions); err != nil || versions != len(migrations) {
		t.Fatalf("%d rows in schema_migrations (%v), want %d", versions, err, len(migrations))
	}
}

// TestPruneAcrossSteps: a pass of several transactions (2,500 old messages
// in one conversation, 1,200 conversations with one old message each, both
// retention measures) removes exactly what the retention says, with the
// inbox entries and byte counts.
func TestPruneAcrossSteps(t *testing.T) {
	srv := testpg.Start(t)
	s := open(t, srv.NewDB(t), nil)
	now := time.Now()
	old := now.Add(-2 * time.Hour).UnixMilli()
	var ms []protocol.Message
	for i := range 2501 {
		m := storagetest.Msg("big", "bigger", fmt.Sprint("c", i), i)
		m.Time = old
		if i == 2500 {
			m.Time = now.UnixMilli()
		}
		ms = append(ms, m)
	}
	for i := range 1200 {
		m := storagetest.Msg(fmt.Sprint("a", i), fmt.Sprint("b", i), "", i)
		m.Time = old
		ms = append(ms, m)
	}
	var last storage.Appended
	var wg sync.WaitGroup
	for w := range 16 { // worker 0 sends big's messages, in order; the others the rest
		wg.Add(1)
		go func() {
			defer wg.Done()
			lo, hi, step := 0, 2501, 1
			if w > 0 {
				lo, hi, step = 2500+w, len(ms), 15
			}
			for i := lo; i < hi; i += step {
				a, err := s.Append(context.Background(), ms[i])
				if err != nil {
					t.Error(err)
					return
				}
				if i == 2500 {
					last = a
				}
			}
		}()
	}
	wg.Wait()
	if n, err := s.Prune(context.Background(), storage.Retention{MaxAge: time.Hour, MaxCount: 2000}, now); n != 3700 || err != nil {
		t.Fatalf("pruned %d (%v), want 3700", n, err)
	}
	var msgs, inbox int
	var bytes int64
	err := s.pool.QueryRow(context.Background(), `SELECT (SELECT count(*) FROM messages), (SELECT count(*) FROM inbox),
		(SELECT coalesce(sum(value), 0) FROM counters WHERE key LIKE 'b%')`).Scan(&msgs, &inbox, &bytes)
	if err != nil || msgs != 1 || inbox != 2 || bytes != int64(len(last.Encoded)) {
		t.Fatalf("messages %d, inbox entries %d, bytes counted %d (%v); want 1, 2, %d", msgs, inbox, bytes, err, len(last.Encoded))
	}
	p, _ := s.Sync("bigger", storage.HistoryFilter{Limit: 10})
	if len(p.Messages) != 1 || p.Messages[0].InboxSeq != 2501 {
		t.Fatalf("bigger's inbox: %+v", p.Messages)
	}
}
