package storage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
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
