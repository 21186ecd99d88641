package storage

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/imbridge/imbridge/protocol"
)

// storedBytes returns the byte counter of sender, read from the file.
func storedBytes(t *testing.T, s *Bolt, sender string) (n uint64) {
	t.Helper()
	if err := s.db.View(func(tx *bolt.Tx) error {
		n = counter(tx.Bucket(bucketSeq), bytesKey(sender))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestQuota: a sender's stored bytes are the lengths of their stored
// messages; an append over MaxUserBytes fails with ErrQuotaExceeded, stores
// nothing and takes no seq; other senders, duplicates, and the receiver's
// own sends are not affected; pruning frees room.
func TestQuota(t *testing.T) {
	ctx := context.Background()
	probe, _ := openTemp(t, nil)
	one, err := probe.Append(ctx, msg("alice", "bob", "c1", 1))
	if err != nil {
		t.Fatal(err)
	}
	size := uint64(len(one.Encoded))
	if got := storedBytes(t, probe, "alice"); got != size {
		t.Fatalf("alice stores %d bytes, want %d", got, size)
	}

	now := time.Now()
	var ms []protocol.Message
	var sizes []uint64
	for i := 1; i <= 3; i++ {
		m := msg("alice", "bob", fmt.Sprint("c", i), i)
		m.Time = now.Add(-time.Duration(10-i) * time.Hour).UnixMilli()
		ms = append(ms, m)
		sizes = append(sizes, uint64(len(protocol.WithUint(protocol.AppendMessage(nil, &m), "seq", uint64(i)))))
	}
	s, _ := openTemp(t, &Options{MaxUserBytes: sizes[0] + sizes[1] + sizes[2] + size/2}) // room for three
	for i, m := range ms {
		if a, err := s.Append(ctx, m); err != nil || uint64(len(a.Encoded)) != sizes[i] {
			t.Fatalf("append %d: %v, %d bytes, want %d", i, err, len(a.Encoded), sizes[i])
		}
	}
	if _, err = s.Append(ctx, msg("alice", "bob", "c4", 4)); !errors.Is(err, ErrQuotaExceeded) {
		t.Fatalf("fourth append: %v, want ErrQuotaExceeded", err)
	}
	if err.Error() != "storage: quota exceeded" {
		t.Errorf("message %q", err)
	}
	if dup, err := s.Append(ctx, msg("alice", "bob", "c2", 2)); err != nil || !dup.Duplicate {
		t.Fatalf("a retry over the quota: %+v %v, want the duplicate", dup, err)
	}
	if _, err := s.Append(ctx, msg("bob", "alice", "", 5)); err != nil {
		t.Fatalf("bob's own send: %v", err)
	}
	p, _ := s.History("alice", "bob", HistoryFilter{Limit: 10})
	if len(p.Messages) != 4 || p.Messages[3].Seq != 4 || p.Messages[3].From != "bob" {
		t.Fatalf("history after the refusal: %+v (the refused append must take no seq)", p.Messages)
	}
	n, err := s.Prune(ctx, Retention{MaxAge: 7*time.Hour + 30*time.Minute}, now) // alice's first two
	if err != nil || n != 2 {
		t.Fatalf("pruned %d %v", n, err)
	}
	if got := storedBytes(t, s, "alice"); got != sizes[2] {
		t.Fatalf("after pruning alice stores %d bytes, want %d", got, sizes[2])
	}
	if _, err := s.Append(ctx, msg("alice", "bob", "c4", 4)); err != nil {
		t.Fatalf("after pruning: %v", err)
	}
}

// TestQuotaFailsOnlyItsAppend: in one commit, the append that goes over the
// quota fails, the sender's earlier appends of the same commit and the
// other senders' are stored, in one commit.
func TestQuotaFailsOnlyItsAppend(t *testing.T) {
	probe, _ := openTemp(t, nil)
	one, _ := probe.Append(context.Background(), msg("alice", "bob", "", 1))
	size := uint64(len(one.Encoded))

	h := openHeld(t, Options{MaxUserBytes: 2*size + size/2})
	h.hold(t, msg("zed", "zoe", "", 0))
	before := h.Stats()
	ms := []protocol.Message{
		msg("alice", "bob", "", 1), msg("carol", "bob", "", 2), msg("alice", "bob", "", 3),
		msg("alice", "bob", "", 4), msg("carol", "bob", "", 5),
	}
	res, errs := h.appendAll(t, ms)
	for i := range ms {
		if want := i == 3; errors.Is(errs[i], ErrQuotaExceeded) != want || (!want && errs[i] != nil) {
			t.Errorf("append %d (%s): %+v %v", i, ms[i].From, res[i], errs[i])
		}
	}
	if st := h.Stats(); st.Commits-before.Commits != 1 || st.Appended-before.Appended != 4 {
		t.Errorf("%d commits, %d appends; want 1, 4", st.Commits-before.Commits, st.Appended-before.Appended)
	}
	if got := storedBytes(t, h.Bolt, "alice"); got != 2*size {
		t.Errorf("alice stores %d, want %d", got, 2*size)
	}
}

// TestOpenMigratesFormat3: a file of format 3 (no byte counters) opens,
// gets the counters a format 4 file would have, and is format 4 after.
func TestOpenMigratesFormat3(t *testing.T) {
	path := filepath.Join(t.TempDir(), "h.db")
	s, err := OpenBolt(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i := range 30 {
		s.Append(ctx, msg(fmt.Sprint("u", i%3), fmt.Sprint("u", i%5), fmt.Sprint("c", i), i))
	}
	want := map[string]uint64{}
	for i := range 3 {
		want[fmt.Sprint("u", i)] = storedBytes(t, s, fmt.Sprint("u", i))
	}
	s.Close()
	// Make it a format 3 file: the same buckets without the counters.
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		for u := range want {
			if err := tx.Bucket(bucketSeq).Delete(bytesKey(u)); err != nil {
				return err
			}
		}
		return tx.Bucket(bucketMeta).Put(keyVersion, []byte("3"))
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()

	s, err = OpenBolt(path, &Options{MaxUserBytes: want["u0"]})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { s.Close(); checkConsistent(t, path) }()
	for u, n := range want {
		if got := storedBytes(t, s, u); got != n || n == 0 {
			t.Errorf("%s: %d bytes after migration, want %d", u, got, n)
		}
	}
	if _, err := s.Append(ctx, msg("u0", "u1", "", 99)); !errors.Is(err, ErrQuotaExceeded) {
		t.Errorf("u0 at its quota: %v", err)
	}
	s.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketMeta).Get(keyVersion); string(v) != formatVersion {
			t.Errorf("version %q after migration", v)
		}
		return nil
	})
}
