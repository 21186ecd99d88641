// Package storagetest is the conformance suite of storage.Store: the same
// cases, run against every backend (bbolt in package storage, PostgreSQL in
// storage/postgres), so that the bridge sees one behaviour.
//
// # Basics
//
// A backend's test calls [Run] with an [Opener] that opens a new, empty
// store for one case and closes it at the case's cleanup (Close may also be
// called by the case; it must be idempotent).
//
// # Caveats
//
// The cases use the real backend and real goroutines; run them with -race.
// Backend-specific cases (file locking, formats, several nodes) stay with
// their backend.
package storagetest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/imbridge/imbridge/protocol"
	"github.com/imbridge/imbridge/storage"
)

// Opener opens a new, empty store with options o, closed at t's cleanup.
type Opener func(t *testing.T, o *storage.Options) storage.Store

// Run runs every case of the suite as a subtest of t, each on a new store.
func Run(t *testing.T, open Opener) {
	cases := []struct {
		name string
		run  func(*testing.T, Opener)
	}{
		{"AppendAssignsSequences", testAppendAssignsSequences},
		{"DeduplicatesRetries", testDeduplicatesRetries},
		{"HistoryPaging", testHistoryPaging},
		{"SyncFollowsInbox", testSyncFollowsInbox},
		{"SyncFromZeroStartsAtTheOldest", testSyncFromZero},
		{"AfterTheLastSeq", testAfterTheLastSeq},
		{"NeighbourKeysStayApart", testNeighbourKeys},
		{"BadLimit", testBadLimit},
		{"Quota", testQuota},
		{"QuotaFailsOnlyItsAppend", testQuotaFailsOnlyItsAppend},
		{"Prune", testPrune},
		{"PruneHonoursContext", testPruneHonoursContext},
		{"ConcurrentAppendsShareCommits", testConcurrentAppends},
		{"AppendHonoursContext", testAppendHonoursContext},
		{"BadAppendFailsOnlyItself", testBadAppend},
		{"OnCommitRunsAfterSendersAreReleased", testOnCommitAfterRelease},
		{"Closed", testClosed},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { c.run(t, open) })
	}
}

// Msg returns message n from one user to another, with client id id ("":
// none), dated n ms after the epoch, with data {"n":n}.
func Msg(from, to, id string, n int) protocol.Message {
	return protocol.Message{
		ID: fmt.Sprintf("m-%s-%s-%d", from, to, n), From: from, To: to,
		Time: int64(n), Data: json.RawMessage(fmt.Sprintf(`{"n":%d}`, n)), ClientMsgID: id,
	}
}

// SyncAll syncs user's inbox from the start, pages of limit, and returns
// the inboxSeqs it got.
func SyncAll(t *testing.T, s storage.Store, user string, limit int) []uint64 {
	t.Helper()
	var got []uint64
	var after uint64
	for {
		p, err := s.Sync(user, storage.HistoryFilter{After: after, Limit: limit})
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range p.Messages {
			got = append(got, m.InboxSeq)
			after = m.InboxSeq
		}
		if !p.More {
			return got
		}
	}
}

// mustAppend appends m and fails the test on an error.
func mustAppend(t *testing.T, s storage.Store, m protocol.Message) storage.Appended {
	t.Helper()
	a, err := s.Append(context.Background(), m)
	if err != nil {
		t.Fatalf("append %s: %v", m.ID, err)
	}
	return a
}

// seqs returns the conversation seqs of a page, or with inbox, the inboxSeqs.
func seqs(p storage.Page, inbox bool) []uint64 {
	out := []uint64{}
	for _, m := range p.Messages {
		if inbox {
			out = append(out, m.InboxSeq)
		} else {
			out = append(out, m.Seq)
		}
	}
	return out
}

func testAppendAssignsSequences(t *testing.T, open Opener) {
	s := open(t, nil)
	a1 := mustAppend(t, s, Msg("alice", "bob", "", 1))
	a2 := mustAppend(t, s, Msg("bob", "alice", "", 2))
	a3 := mustAppend(t, s, Msg("alice", "carol", "", 3))
	if a1.Message.Seq != 1 || a2.Message.Seq != 2 || a3.Message.Seq != 1 {
		t.Fatalf("conversation seqs = %d %d %d, want 1 2 1", a1.Message.Seq, a2.Message.Seq, a3.Message.Seq)
	}
	// alice's inbox: 1 (to bob), 2 (from bob), 3 (to carol); bob's: 1, 2; carol's: 1.
	if a1.FromInboxSeq != 1 || a1.ToInboxSeq != 1 || a2.FromInboxSeq != 2 || a2.ToInboxSeq != 2 || a3.FromInboxSeq != 3 || a3.ToInboxSeq != 1 {
		t.Fatalf("inbox seqs: %+v %+v %+v", a1, a2, a3)
	}
	self := mustAppend(t, s, Msg("alice", "alice", "", 4))
	if self.FromInboxSeq != 4 || self.ToInboxSeq != 4 || self.Message.Seq != 1 {
		t.Fatalf("note to self: %+v", self)
	}
	if string(a1.Encoded) != string(protocol.WithUint(protocol.AppendMessage(nil, &protocol.Message{
		ID: a1.Message.ID, From: "alice", To: "bob", Time: 1, Data: json.RawMessage(`{"n":1}`)}), "seq", 1)) {
		t.Fatalf("Encoded = %s", a1.Encoded)
	}
	if len(s.Epoch()) != 16 {
		t.Fatalf("epoch %q, want 16 hex digits", s.Epoch())
	}
}

func testDeduplicatesRetries(t *testing.T, open Opener) {
	s := open(t, nil)
	first := mustAppend(t, s, Msg("alice", "bob", "c1", 1))
	if first.Duplicate {
		t.Fatalf("first: %+v", first)
	}
	retry := mustAppend(t, s, Msg("alice", "bob", "c1", 99))
	if !retry.Duplicate || retry.Message.ID != first.Message.ID || retry.Message.Seq != 1 ||
		retry.ToInboxSeq != first.ToInboxSeq || string(retry.Encoded) != string(first.Encoded) {
		t.Fatalf("retry = %+v, want duplicate of %+v", retry, first)
	}
	// The same client id from another sender is a different message.
	if other := mustAppend(t, s, Msg("bob", "alice", "c1", 2)); other.Duplicate || other.Message.Seq != 2 {
		t.Fatalf("other sender: %+v", other)
	}
	p, err := s.History("alice", "bob", storage.HistoryFilter{Limit: 10})
	if err != nil || len(p.Messages) != 2 {
		t.Fatalf("history has %d messages (%v), want 2", len(p.Messages), err)
	}
}

func testHistoryPaging(t *testing.T, open Opener) {
	s := open(t, nil)
	for i := 1; i <= 25; i++ {
		mustAppend(t, s, Msg("alice", "bob", "", i))
	}
	for _, c := range []struct {
		a, b string
		f    storage.HistoryFilter
		want string
		more bool
	}{
		{"bob", "alice", storage.HistoryFilter{Limit: 10}, "[16 17 18 19 20 21 22 23 24 25]", true},
		{"alice", "bob", storage.HistoryFilter{Before: 16, Limit: 10}, "[6 7 8 9 10 11 12 13 14 15]", true},
		{"alice", "bob", storage.HistoryFilter{Before: 6, Limit: 10}, "[1 2 3 4 5]", false},
		{"alice", "bob", storage.HistoryFilter{After: 20, Limit: 3}, "[21 22 23]", true},
		{"alice", "bob", storage.HistoryFilter{After: 23, Limit: 3}, "[24 25]", false},
		{"alice", "bob", storage.HistoryFilter{Before: 1000, Limit: 2}, "[24 25]", true},
		{"alice", "bob", storage.HistoryFilter{Before: math.MaxUint64, Limit: 1}, "[25]", true},
		{"alice", "nobody", storage.HistoryFilter{Limit: 5}, "[]", false},
	} {
		p, err := s.History(c.a, c.b, c.f)
		if err != nil {
			t.Fatal(err)
		}
		if got := fmt.Sprint(seqs(p, false)); got != c.want || p.More != c.more {
			t.Errorf("history %+v = %v more=%v, want %v more=%v", c.f, got, p.More, c.want, c.more)
		}
	}
	p, _ := s.History("alice", "bob", storage.HistoryFilter{Limit: 1})
	if len(p.Messages) != 1 || string(p.Messages[0].Data) != `{"n":25}` || p.Messages[0].From != "alice" || p.Messages[0].Time != 25 {
		t.Fatalf("message = %+v", p.Messages)
	}
}

func testSyncFollowsInbox(t *testing.T, open Opener) {
	s := open(t, nil)
	mustAppend(t, s, Msg("alice", "bob", "", 1))
	mustAppend(t, s, Msg("carol", "bob", "", 2))
	mustAppend(t, s, Msg("bob", "alice", "", 3))
	p, err := s.Sync("bob", storage.HistoryFilter{After: 1, Before: 2, Limit: 10}) // Before is ignored
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Messages) != 2 || p.Messages[0].From != "carol" || p.Messages[0].InboxSeq != 2 || p.Messages[1].InboxSeq != 3 || p.Messages[1].To != "alice" || p.More {
		t.Fatalf("sync = %+v", p)
	}
}

// testSyncFromZero: a new device syncing from 0 gets the oldest page first,
// then the rest, never only the newest.
func testSyncFromZero(t *testing.T, open Opener) {
	s := open(t, nil)
	for i := 1; i <= 7; i++ {
		mustAppend(t, s, Msg("alice", "bob", "", i))
	}
	got := SyncAll(t, s, "bob", 3)
	if fmt.Sprint(got) != "[1 2 3 4 5 6 7]" {
		t.Fatalf("synced %v", got)
	}
}

// testAfterTheLastSeq: after=2^64-1 is past everything; it must not wrap
// around to the oldest page.
func testAfterTheLastSeq(t *testing.T, open Opener) {
	s := open(t, nil)
	for i := 1; i <= 3; i++ {
		mustAppend(t, s, Msg("alice", "bob", "", i))
	}
	for _, after := range []uint64{math.MaxUint64, math.MaxUint64 - 1, math.MaxInt64, 3} {
		sync, err := s.Sync("bob", storage.HistoryFilter{After: after, Limit: 10})
		if err != nil || len(sync.Messages) != 0 || sync.More {
			t.Fatalf("sync after %d: %d messages, more=%v, %v; want none", after, len(sync.Messages), sync.More, err)
		}
		hist, err := s.History("alice", "bob", storage.HistoryFilter{After: after, Limit: 10})
		if err != nil || len(hist.Messages) != 0 || hist.More {
			t.Fatalf("history after %d: %d messages, more=%v, %v; want none", after, len(hist.Messages), hist.More, err)
		}
	}
}

// testNeighbourKeys: conversations and inboxes whose keys share a prefix
// ("bob" and "bob2", "a|b" and "a|b.c") never leak into each other's pages.
func testNeighbourKeys(t *testing.T, open Opener) {
	s := open(t, nil)
	for i := 1; i <= 3; i++ {
		mustAppend(t, s, Msg("alice", "bob", "", i))
		mustAppend(t, s, Msg("alice", "bob2", "", 10+i))
		mustAppend(t, s, Msg("alice", "bo", "", 20+i))
	}
	for _, f := range []storage.HistoryFilter{{Limit: 100}, {After: 1, Limit: 100}, {Before: 3, Limit: 100}} {
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
		p, _ := s.Sync(user, storage.HistoryFilter{Limit: 100})
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

func testBadLimit(t *testing.T, open Opener) {
	s := open(t, nil)
	if _, err := s.History("a", "b", storage.HistoryFilter{}); err == nil {
		t.Error("history with limit 0 passed")
	}
	if _, err := s.Sync("a", storage.HistoryFilter{Limit: -1}); err == nil {
		t.Error("sync with limit -1 passed")
	}
}

// size returns the stored length of m as message seq of its conversation.
func size(m protocol.Message, seq uint64) uint64 {
	return uint64(len(protocol.WithUint(protocol.AppendMessage(nil, &m), "seq", seq)))
}

// testQuota: an append over MaxUserBytes fails with ErrQuotaExceeded, stores
// nothing and takes no seq; duplicates and the receiver's own sends are not
// affected; pruning frees room.
func testQuota(t *testing.T, open Opener) {
	now := time.Now()
	var ms []protocol.Message
	var sizes []uint64
	for i := 1; i <= 4; i++ {
		m := Msg("alice", "bob", fmt.Sprint("c", i), i)
		m.Time = now.Add(-time.Duration(10-i) * time.Hour).UnixMilli()
		ms = append(ms, m)
		sizes = append(sizes, size(m, uint64(i)))
	}
	s := open(t, &storage.Options{MaxUserBytes: sizes[0] + sizes[1] + sizes[2] + sizes[3]/2}) // room for three
	ctx := context.Background()
	for i, m := range ms[:3] {
		if a := mustAppend(t, s, m); uint64(len(a.Encoded)) != sizes[i] {
			t.Fatalf("append %d: %d bytes, want %d", i, len(a.Encoded), sizes[i])
		}
	}
	_, err := s.Append(ctx, ms[3])
	if !errors.Is(err, storage.ErrQuotaExceeded) {
		t.Fatalf("fourth append: %v, want ErrQuotaExceeded", err)
	}
	if err.Error() != "storage: quota exceeded" {
		t.Errorf("message %q", err)
	}
	if dup := mustAppend(t, s, ms[1]); !dup.Duplicate {
		t.Fatalf("a retry over the quota: %+v, want the duplicate", dup)
	}
	mustAppend(t, s, Msg("bob", "alice", "", 5))
	p, _ := s.History("alice", "bob", storage.HistoryFilter{Limit: 10})
	if len(p.Messages) != 4 || p.Messages[3].Seq != 4 || p.Messages[3].From != "bob" {
		t.Fatalf("history after the refusal: %+v (the refused append must take no seq)", p.Messages)
	}
	n, err := s.Prune(ctx, storage.Retention{MaxAge: 7*time.Hour + 30*time.Minute}, now) // alice's first two
	if err != nil || n != 2 {
		t.Fatalf("pruned %d %v", n, err)
	}
	// One message left: room for two more, of about the same size.
	for i := 5; i <= 7; i++ {
		m := Msg("alice", "bob", fmt.Sprint("c", i), i)
		if _, err := s.Append(ctx, m); (i == 7) != errors.Is(err, storage.ErrQuotaExceeded) || (i < 7 && err != nil) {
			t.Fatalf("append %d after pruning: %v", i, err)
		}
	}
}

// testQuotaFailsOnlyItsAppend: in one commit, the append that goes over
// the quota fails; the sender's earlier appends of the same commit and the
// other senders' are stored, in one commit.
func testQuotaFailsOnlyItsAppend(t *testing.T, open Opener) {
	one := size(Msg("alice", "bob", "", 1), 1)
	h := OpenHeld(t, open, storage.Options{MaxUserBytes: 2*one + one/2})
	h.Hold(t, Msg("zed", "zoe", "", 0))
	before := h.Stats()
	ms := []protocol.Message{
		Msg("alice", "bob", "", 1), Msg("carol", "bob", "", 2), Msg("alice", "bob", "", 3),
		Msg("alice", "bob", "", 4), Msg("carol", "bob", "", 5),
	}
	res, errs := h.AppendAll(t, ms)
	for i := range ms {
		if want := i == 3; errors.Is(errs[i], storage.ErrQuotaExceeded) != want || (!want && errs[i] != nil) {
			t.Errorf("append %d (%s): %+v %v", i, ms[i].From, res[i], errs[i])
		}
	}
	if st := h.Stats(); st.Commits-before.Commits != 1 || st.Appended-before.Appended != 4 {
		t.Errorf("%d commits, %d appends; want 1, 4", st.Commits-before.Commits, st.Appended-before.Appended)
	}
	p, _ := h.History("alice", "bob", storage.HistoryFilter{Limit: 10})
	if got := fmt.Sprint(seqs(p, false)); got != "[1 2]" {
		t.Errorf("alice|bob seqs %s, want [1 2]: the refused append takes none", got)
	}
}

// testPrune keeps the newest MaxCount of each conversation and nothing
// older than MaxAge, removing inbox entries and retry records with them.
func testPrune(t *testing.T, open Opener) {
	s := open(t, nil)
	ctx := context.Background()
	now := time.Now()
	for i := 1; i <= 6; i++ {
		m := Msg("alice", "bob", fmt.Sprint("c", i), i)
		m.Time = now.Add(-time.Duration(7-i) * time.Hour).UnixMilli() // 6h ago ... 1h ago
		mustAppend(t, s, m)
	}
	recent := Msg("carol", "bob", "", 100)
	recent.Time = now.UnixMilli()
	mustAppend(t, s, recent)
	n, err := s.Prune(ctx, storage.Retention{MaxCount: 4}, now)
	if err != nil || n != 2 {
		t.Fatalf("pruned %d (%v), want the 2 oldest of alice|bob", n, err)
	}
	p, _ := s.History("alice", "bob", storage.HistoryFilter{Limit: 100})
	if got := fmt.Sprint(seqs(p, false)); got != "[3 4 5 6]" {
		t.Fatalf("kept %s, want [3 4 5 6]", got)
	}
	n, err = s.Prune(ctx, storage.Retention{MaxAge: 150 * time.Minute}, now)
	if err != nil || n != 2 {
		t.Fatalf("age pruning removed %d (%v), want 2 (4h and 3h old)", n, err)
	}
	sync, _ := s.Sync("bob", storage.HistoryFilter{Limit: 100})
	if got := fmt.Sprint(seqs(sync, true)); got != "[5 6 7]" { // 1-4 pruned: a hole a sync skips
		t.Fatalf("bob's inbox after pruning: %v", got)
	}
	if alice, _ := s.Sync("alice", storage.HistoryFilter{Limit: 100}); len(alice.Messages) != 2 {
		t.Fatalf("alice's inbox has %d", len(alice.Messages))
	}
	// The retry record of a pruned message is gone: the id may be used again.
	if again := mustAppend(t, s, Msg("alice", "bob", "c1", 1)); again.Duplicate || again.Message.Seq != 7 {
		t.Fatalf("resend of a pruned id: %+v", again)
	}
	// The record of a kept one is not.
	if dup := mustAppend(t, s, Msg("alice", "bob", "c6", 6)); !dup.Duplicate {
		t.Fatal("retry record of a kept message was pruned")
	}
	if n, _ := s.Prune(ctx, storage.Retention{}, now); n != 0 {
		t.Fatal("an empty retention pruned")
	}
}

// testPruneHonoursContext: a prune called with an ended context removes
// nothing and returns the context's error.
func testPruneHonoursContext(t *testing.T, open Opener) {
	s := open(t, nil)
	mustAppend(t, s, Msg("alice", "bob", "", 1))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if n, err := s.Prune(ctx, storage.Retention{MaxAge: time.Hour}, time.Now()); n != 0 || !errors.Is(err, context.Canceled) {
		t.Fatalf("prune with an ended context: %d %v", n, err)
	}
	if p, _ := s.History("alice", "bob", storage.HistoryFilter{Limit: 1}); len(p.Messages) != 1 {
		t.Fatal("a cancelled prune removed a message")
	}
}

// testConcurrentAppends checks group commit: many concurrent appends finish
// in fewer commits than appends, none is lost, every conversation's seqs
// are 1..n without holes in OnCommit order, and the shared inbox is 1..N.
func testConcurrentAppends(t *testing.T, open Opener) {
	var mu sync.Mutex // guards committed
	var committed []storage.Appended
	s := open(t, &storage.Options{OnCommit: func(a []storage.Appended) {
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
				if _, err := s.Append(context.Background(), Msg(fmt.Sprintf("u%d", i%4), "hub", fmt.Sprintf("%d-%d", i, j), j)); err != nil {
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
	inbox := SyncAll(t, s, "hub", protocol.MaxPageLimit)
	for i, seq := range inbox {
		if seq != uint64(i+1) {
			t.Fatalf("hub's inbox: %d at position %d of %d", seq, i, len(inbox))
		}
	}
	if len(inbox) != senders*each {
		t.Fatalf("hub's inbox has %d", len(inbox))
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
	var lastInbox uint64
	for _, a := range committed { // OnCommit order is seq order per conversation and inbox
		k := string(storage.ConversationKey(a.Message.From, a.Message.To))
		if a.Message.Seq != last[k]+1 || a.ToInboxSeq != lastInbox+1 {
			t.Fatalf("conversation %s: seq %d after %d, hub's inboxSeq %d after %d", k, a.Message.Seq, last[k], a.ToInboxSeq, lastInbox)
		}
		last[k], lastInbox = a.Message.Seq, a.ToInboxSeq
	}
}

func testAppendHonoursContext(t *testing.T, open Opener) {
	s := open(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Append(ctx, Msg("a", "b", "", 1)); err == nil {
		// The request may have been queued before the context was seen; then it
		// must have been stored.
		p, _ := s.History("a", "b", storage.HistoryFilter{Limit: 1})
		if len(p.Messages) != 1 {
			t.Fatal("append reported success but stored nothing")
		}
	} else if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
}

// testBadAppend: one append that makes its commit fail (a sender ID of
// 40,000 random characters: over bbolt's key limit and PostgreSQL's index
// entry) fails alone; the others queued with it are stored, together in one
// commit, and OnCommit sees exactly them.
func testBadAppend(t *testing.T, open Opener) {
	h := OpenHeld(t, open, storage.Options{})
	h.Hold(t, Msg("alice", "bob", "", 0))
	before := h.Stats()
	noise := make([]byte, 20_000)
	rand.Read(noise)
	var ms []protocol.Message
	for i := range 8 {
		if i == 3 {
			ms = append(ms, Msg(hex.EncodeToString(noise), "bob", "bad", i))
			continue
		}
		ms = append(ms, Msg(fmt.Sprintf("u%d", i), "bob", fmt.Sprintf("c%d", i), i))
	}
	res, errs := h.AppendAll(t, ms)
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
	if p, _ := h.Sync("bob", storage.HistoryFilter{Limit: 100}); len(p.Messages) != 8 { // the held one and the 7 good ones
		t.Errorf("bob's inbox has %d messages, want 8", len(p.Messages))
	}
	if seen := h.Seen(); len(seen) != 2 || len(seen[1]) != 7 {
		t.Errorf("OnCommit calls: %d, last with %d appends; want 2, 7", len(seen), len(seen[len(seen)-1]))
	}
}

// testOnCommitAfterRelease: a slow OnCommit (the bridge's fan-out channel
// full) does not hold up the Append calls of its commit.
func testOnCommitAfterRelease(t *testing.T, open Opener) {
	entered, release := make(chan struct{}), make(chan struct{})
	s := open(t, &storage.Options{OnCommit: func([]storage.Appended) {
		select {
		case entered <- struct{}{}:
			<-release
		default:
		}
	}})
	defer close(release)
	done := make(chan error, 1)
	go func() {
		_, err := s.Append(context.Background(), Msg("alice", "bob", "", 1))
		done <- err
	}()
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("OnCommit not called")
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Append still waits for OnCommit to return")
	}
}

// testClosed: calls after Close return ErrClosed; Close again returns nil.
func testClosed(t *testing.T, open Opener) {
	s := open(t, nil)
	mustAppend(t, s, Msg("alice", "bob", "c1", 1))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Append(context.Background(), Msg("alice", "bob", "", 2)); !errors.Is(err, storage.ErrClosed) {
		t.Errorf("append after close: %v", err)
	}
	if _, err := s.History("alice", "bob", storage.HistoryFilter{Limit: 1}); !errors.Is(err, storage.ErrClosed) {
		t.Errorf("history after close: %v", err)
	}
	if _, err := s.Sync("bob", storage.HistoryFilter{Limit: 1}); !errors.Is(err, storage.ErrClosed) {
		t.Errorf("sync after close: %v", err)
	}
	if _, err := s.Prune(context.Background(), storage.Retention{MaxCount: 1}, time.Now()); !errors.Is(err, storage.ErrClosed) {
		t.Errorf("prune after close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second close: %v", err)
	}
}
