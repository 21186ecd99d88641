package storage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/imbridge/imbridge/protocol"
)

func openTemp(t *testing.T, opts *Options) (*Bolt, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "history.db")
	s, err := OpenBolt(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
		checkConsistent(t, path)
	})
	return s, path
}

// checkConsistent runs bbolt's own consistency check over the file.
func checkConsistent(t *testing.T, path string) {
	t.Helper()
	if err := Verify(path, time.Second); err != nil {
		t.Error(err)
	}
}

func msg(from, to, clientID string, n int) protocol.Message {
	return protocol.Message{
		ID: fmt.Sprintf("m-%s-%s-%d", from, to, n), From: from, To: to,
		Time: int64(n), Data: json.RawMessage(fmt.Sprintf(`{"n":%d}`, n)), ClientMsgID: clientID,
	}
}

func TestAppendAssignsSequences(t *testing.T) {
	s, _ := openTemp(t, nil)
	ctx := context.Background()
	a1, err := s.Append(ctx, msg("alice", "bob", "", 1))
	if err != nil {
		t.Fatal(err)
	}
	a2, _ := s.Append(ctx, msg("bob", "alice", "", 2))
	a3, _ := s.Append(ctx, msg("alice", "carol", "", 3))
	if a1.Message.Seq != 1 || a2.Message.Seq != 2 || a3.Message.Seq != 1 {
		t.Fatalf("conversation seqs = %d %d %d, want 1 2 1", a1.Message.Seq, a2.Message.Seq, a3.Message.Seq)
	}
	// alice's inbox: 1 (to bob), 2 (from bob), 3 (to carol); bob's: 1, 2; carol's: 1.
	if a1.FromInboxSeq != 1 || a1.ToInboxSeq != 1 || a2.FromInboxSeq != 2 || a2.ToInboxSeq != 2 || a3.FromInboxSeq != 3 || a3.ToInboxSeq != 1 {
		t.Fatalf("inbox seqs: %+v %+v %+v", a1, a2, a3)
	}
	self, _ := s.Append(ctx, msg("alice", "alice", "", 4))
	if self.FromInboxSeq != 4 || self.ToInboxSeq != 4 || self.Message.Seq != 1 {
		t.Fatalf("note to self: %+v", self)
	}
}

func TestAppendDeduplicatesRetries(t *testing.T) {
	s, _ := openTemp(t, nil)
	ctx := context.Background()
	first, err := s.Append(ctx, msg("alice", "bob", "c1", 1))
	if err != nil || first.Duplicate {
		t.Fatalf("first: %+v %v", first, err)
	}
	retry, err := s.Append(ctx, msg("alice", "bob", "c1", 99))
	if err != nil {
		t.Fatal(err)
	}
	if !retry.Duplicate || retry.Message.ID != first.Message.ID || retry.Message.Seq != 1 || retry.ToInboxSeq != first.ToInboxSeq {
		t.Fatalf("retry = %+v, want duplicate of %+v", retry, first)
	}
	// The same client id from another sender is a different message.
	other, _ := s.Append(ctx, msg("bob", "alice", "c1", 2))
	if other.Duplicate || other.Message.Seq != 2 {
		t.Fatalf("other sender: %+v", other)
	}
	p, err := s.History("alice", "bob", HistoryFilter{Limit: 10})
	if err != nil || len(p.Messages) != 2 {
		t.Fatalf("history has %d messages (%v), want 2", len(p.Messages), err)
	}
}

func TestHistoryPaging(t *testing.T) {
	s, _ := openTemp(t, nil)
	ctx := context.Background()
	for i := 1; i <= 25; i++ {
		if _, err := s.Append(ctx, msg("alice", "bob", "", i)); err != nil {
			t.Fatal(err)
		}
	}
	seqs := func(p Page) (out []uint64) {
		for _, m := range p.Messages {
			out = append(out, m.Seq)
		}
		return out
	}
	newest, _ := s.History("bob", "alice", HistoryFilter{Limit: 10})
	if got := seqs(newest); fmt.Sprint(got) != "[16 17 18 19 20 21 22 23 24 25]" || !newest.More {
		t.Fatalf("newest page = %v more=%v", got, newest.More)
	}
	older, _ := s.History("alice", "bob", HistoryFilter{Before: 16, Limit: 10})
	if got := seqs(older); fmt.Sprint(got) != "[6 7 8 9 10 11 12 13 14 15]" || !older.More {
		t.Fatalf("older page = %v more=%v", got, older.More)
	}
	oldest, _ := s.History("alice", "bob", HistoryFilter{Before: 6, Limit: 10})
	if got := seqs(oldest); fmt.Sprint(got) != "[1 2 3 4 5]" || oldest.More {
		t.Fatalf("oldest page = %v more=%v", got, oldest.More)
	}
	after, _ := s.History("alice", "bob", HistoryFilter{After: 20, Limit: 3})
	if got := seqs(after); fmt.Sprint(got) != "[21 22 23]" || !after.More {
		t.Fatalf("after page = %v more=%v", got, after.More)
	}
	tail, _ := s.History("alice", "bob", HistoryFilter{After: 23, Limit: 3})
	if got := seqs(tail); fmt.Sprint(got) != "[24 25]" || tail.More {
		t.Fatalf("tail page = %v more=%v", got, tail.More)
	}
	beyond, _ := s.History("alice", "bob", HistoryFilter{Before: 1000, Limit: 2})
	if got := seqs(beyond); fmt.Sprint(got) != "[24 25]" {
		t.Fatalf("before past the end = %v", got)
	}
	none, err := s.History("alice", "nobody", HistoryFilter{Limit: 5})
	if err != nil || len(none.Messages) != 0 || none.More {
		t.Fatalf("empty conversation: %+v %v", none, err)
	}
	if string(newest.Messages[0].Data) != `{"n":16}` {
		t.Fatalf("data = %s", newest.Messages[0].Data)
	}
}

func TestSyncFollowsInbox(t *testing.T) {
	s, _ := openTemp(t, nil)
	ctx := context.Background()
	s.Append(ctx, msg("alice", "bob", "", 1))
	s.Append(ctx, msg("carol", "bob", "", 2))
	s.Append(ctx, msg("bob", "alice", "", 3))
	p, err := s.Sync("bob", HistoryFilter{After: 1, Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Messages) != 2 || p.Messages[0].From != "carol" || p.Messages[0].InboxSeq != 2 || p.Messages[1].InboxSeq != 3 || p.Messages[1].To != "alice" {
		t.Fatalf("sync = %+v", p.Messages)
	}
}

func TestReopenKeepsHistoryAndEpoch(t *testing.T) {
	path := filepath.Join(t.TempDir(), "h.db")
	s, err := OpenBolt(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	epoch := s.Epoch()
	s.Append(context.Background(), msg("alice", "bob", "c1", 1))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Append(context.Background(), msg("alice", "bob", "", 2)); !errors.Is(err, ErrClosed) {
		t.Fatalf("append after close: %v", err)
	}
	if _, err := s.History("alice", "bob", HistoryFilter{Limit: 1}); !errors.Is(err, ErrClosed) {
		t.Fatalf("history after close: %v", err)
	}
	s2, err := OpenBolt(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if s2.Epoch() != epoch || len(epoch) != 16 {
		t.Fatalf("epoch %q after reopen, was %q", s2.Epoch(), epoch)
	}
	dup, _ := s2.Append(context.Background(), msg("alice", "bob", "c1", 1))
	next, _ := s2.Append(context.Background(), msg("bob", "alice", "", 2))
	if !dup.Duplicate || next.Message.Seq != 2 || next.ToInboxSeq != 2 {
		t.Fatalf("after reopen: dup=%+v next=%+v", dup, next)
	}
}

func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "h.db")
	s, err := OpenBolt(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := OpenBolt(path, &Options{LockTimeout: 50 * time.Millisecond}); !errors.Is(err, ErrLocked) {
		t.Fatalf("second open: %v, want ErrLocked", err)
	}

	garbage := filepath.Join(dir, "garbage.db")
	os.WriteFile(garbage, []byte("this is not a database, but it is long enough to have a header ......................................................."), 0o600)
	if _, err := OpenBolt(garbage, nil); err == nil {
		t.Fatal("opened a garbage file")
	}

	foreign := filepath.Join(dir, "foreign.db")
	db, _ := bolt.Open(foreign, 0o600, nil)
	db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucket([]byte("other")); return err })
	db.Close()
	if _, err := OpenBolt(foreign, nil); !errors.Is(err, ErrForeign) {
		t.Fatalf("foreign file: %v, want ErrForeign", err)
	}

	if _, err := OpenBolt(filepath.Join(dir, "missing", "h.db"), nil); err == nil {
		t.Fatal("opened a file in a missing directory")
	}
}

// TestConcurrentAppendsShareCommits checks group commit: many concurrent
// appends finish in fewer commits than appends, none is lost, and every
// conversation's seqs are 1..n without holes.
func TestConcurrentAppendsShareCommits(t *testing.T) {
	var mu sync.Mutex
	var committed []Appended
	s, _ := openTemp(t, &Options{OnCommit: func(a []Appended) {
		mu.Lock()
		committed = append(committed, a...)
		mu.Unlock()
	}})
	const senders, each = 16, 50
	var wg sync.WaitGroup
	for i := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range each {
				if _, err := s.Append(context.Background(), msg(fmt.Sprintf("u%d", i%4), "hub", fmt.Sprintf("%d-%d", i, j), j)); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	st := s.Stats()
	if st.Appended != senders*each {
		t.Fatalf("appended %d, want %d", st.Appended, senders*each)
	}
	if st.Commits >= st.Appended {
		t.Fatalf("%d commits for %d appends: no commit was shared", st.Commits, st.Appended)
	}
	t.Logf("%d appends in %d commits", st.Appended, st.Commits)
	p, _ := s.Sync("hub", HistoryFilter{Limit: protocol.MaxPageLimit})
	if len(p.Messages) != senders*each || !p.More && p.Messages[len(p.Messages)-1].InboxSeq != senders*each {
		t.Fatalf("hub inbox has %d messages", len(p.Messages))
	}
	// Senders are released before OnCommit runs, so the last OnCommit may
	// still be running; Close returns once the writer has finished it.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(committed) != senders*each {
		t.Fatalf("OnCommit saw %d appends", len(committed))
	}
	last := map[string]uint64{}
	for _, a := range committed { // OnCommit order is seq order per conversation
		k := string(ConversationKey(a.Message.From, a.Message.To))
		if a.Message.Seq != last[k]+1 {
			t.Fatalf("conversation %s: seq %d after %d", k, a.Message.Seq, last[k])
		}
		last[k] = a.Message.Seq
	}
}

func TestAppendHonoursContext(t *testing.T) {
	s, _ := openTemp(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Append(ctx, msg("a", "b", "", 1)); err == nil {
		// The request may have been queued before the context was seen; then it
		// must have been stored.
		p, _ := s.History("a", "b", HistoryFilter{Limit: 1})
		if len(p.Messages) != 1 {
			t.Fatal("append reported success but stored nothing")
		}
	} else if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
}

// TestNeighbourKeysStayApart: conversations and inboxes whose keys share a
// prefix ("bob" and "bob2", "a|b" and "a|b.c") never leak into each other's
// pages, in either direction of paging.
func TestNeighbourKeysStayApart(t *testing.T) {
	s, _ := openTemp(t, nil)
	ctx := context.Background()
	for i := 1; i <= 3; i++ {
		s.Append(ctx, msg("alice", "bob", "", i))
		s.Append(ctx, msg("alice", "bob2", "", 10+i))
		s.Append(ctx, msg("alice", "bo", "", 20+i))
	}
	for _, f := range []HistoryFilter{{Limit: 100}, {After: 1, Limit: 100}, {Before: 3, Limit: 100}} {
		p, err := s.History("bob", "alice", f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range p.Messages {
			if m.To != "bob" {
				t.Fatalf("filter %+v: bob's history holds %+v", f, m)
			}
		}
		if p.More {
			t.Fatalf("filter %+v: more beyond bob's conversation", f)
		}
	}
	for _, user := range []string{"bo", "bob", "bob2"} {
		p, _ := s.Sync(user, HistoryFilter{Limit: 100})
		if len(p.Messages) != 3 || p.More {
			t.Fatalf("%s's inbox: %d messages, more=%v", user, len(p.Messages), p.More)
		}
		for _, m := range p.Messages {
			if m.To != user {
				t.Fatalf("%s's inbox holds %+v", user, m)
			}
		}
	}
}

// TestSyncFromZeroStartsAtTheOldest: a new device syncing from 0 gets the
// oldest page first, then the rest by NextAfter, never only the newest.
func TestSyncFromZeroStartsAtTheOldest(t *testing.T) {
	s, _ := openTemp(t, nil)
	for i := 1; i <= 7; i++ {
		s.Append(context.Background(), msg("alice", "bob", "", i))
	}
	var got []uint64
	var after uint64
	for {
		p, err := s.Sync("bob", HistoryFilter{After: after, Limit: 3})
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range p.Messages {
			got = append(got, m.InboxSeq)
			after = m.InboxSeq
		}
		if !p.More {
			break
		}
	}
	if fmt.Sprint(got) != "[1 2 3 4 5 6 7]" {
		t.Fatalf("synced %v", got)
	}
}

// TestPrune keeps the newest MaxCount of each conversation and nothing
// older than MaxAge, removing inbox entries and retry records with them.
func TestPrune(t *testing.T) {
	s, _ := openTemp(t, nil)
	ctx := context.Background()
	now := time.Now()
	for i := 1; i <= 6; i++ {
		m := msg("alice", "bob", fmt.Sprint("c", i), i)
		m.Time = now.Add(-time.Duration(7-i) * time.Hour).UnixMilli() // 6h ago ... 1h ago
		s.Append(ctx, m)
	}
	recent := msg("carol", "bob", "", 100)
	recent.Time = now.UnixMilli()
	s.Append(ctx, recent)
	n, err := s.Prune(context.Background(), Retention{MaxCount: 4}, now)
	if err != nil || n != 2 {
		t.Fatalf("pruned %d (%v), want the 2 oldest of alice|bob", n, err)
	}
	p, _ := s.History("alice", "bob", HistoryFilter{Limit: 100})
	if seqs := fmt.Sprint(p.Messages[0].Seq, len(p.Messages)); seqs != "3 4" {
		t.Fatalf("kept from seq/count %s, want 3 4", seqs)
	}
	n, _ = s.Prune(context.Background(), Retention{MaxAge: 150 * time.Minute}, now)
	if n != 2 {
		t.Fatalf("age pruning removed %d, want 2 (4h and 3h old)", n)
	}
	sync, _ := s.Sync("bob", HistoryFilter{Limit: 100})
	var inbox []uint64
	for _, m := range sync.Messages {
		inbox = append(inbox, m.InboxSeq)
	}
	if fmt.Sprint(inbox) != "[5 6 7]" { // 1-4 pruned: a hole a sync skips
		t.Fatalf("bob's inbox after pruning: %v", inbox)
	}
	alice, _ := s.Sync("alice", HistoryFilter{Limit: 100})
	if len(alice.Messages) != 2 {
		t.Fatalf("alice's inbox has %d", len(alice.Messages))
	}
	// The retry record of a pruned message is gone: the id may be used again.
	again, err := s.Append(ctx, msg("alice", "bob", "c1", 1))
	if err != nil || again.Duplicate || again.Message.Seq != 7 {
		t.Fatalf("resend of a pruned id: %+v %v", again, err)
	}
	// The record of a kept one is not.
	if dup, _ := s.Append(ctx, msg("alice", "bob", "c6", 6)); !dup.Duplicate {
		t.Fatal("retry record of a kept message was pruned")
	}
	if n, _ := s.Prune(context.Background(), Retention{}, now); n != 0 {
		t.Fatal("an empty retention pruned")
	}
}
