package storage_test

import (
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/imbridge/imbridge/protocol"
	"github.com/imbridge/imbridge/storage"
	"github.com/imbridge/imbridge/storage/storagetest"
)

// openBolt opens a new history file in t.TempDir and, at cleanup, closes it
// and runs bbolt's consistency check over it.
func openBolt(t *testing.T, o *storage.Options) storage.Store {
	t.Helper()
	path := filepath.Join(t.TempDir(), "history.db")
	s, err := storage.OpenBolt(path, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
		if err := storage.Verify(path, time.Second); err != nil {
			t.Error(err)
		}
	})
	return s
}

// TestConformance runs the backend-independent cases against bbolt.
func TestConformance(t *testing.T) { storagetest.Run(t, openBolt) }

// TestCommitErrorReachesEveryAppend: when every commit fails (the file is
// closed under the writer), each append of the batch gets the error, none
// hangs, and OnCommit is not called.
func TestCommitErrorReachesEveryAppend(t *testing.T) {
	h := storagetest.OpenHeld(t, func(t *testing.T, o *storage.Options) storage.Store {
		s, err := storage.OpenBolt(filepath.Join(t.TempDir(), "history.db"), o)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() }) // the file is closed under it: Close reports that
		return s
	}, storage.Options{})
	h.Hold(t, storagetest.Msg("alice", "bob", "", 0))
	ms := []protocol.Message{storagetest.Msg("a", "b", "", 1), storagetest.Msg("c", "d", "", 2), storagetest.Msg("e", "f", "", 3)}
	wait := h.Queue(t, ms)
	// Make every further commit fail, whatever its appends. It waits for no
	// write: the writer is outside a transaction.
	if err := storage.CloseFile(h.Store); err != nil {
		t.Fatal(err)
	}
	h.Release()
	res, errs := wait()
	for i := range ms {
		if errs[i] == nil || errors.Is(errs[i], storage.ErrQuotaExceeded) {
			t.Errorf("append %d: %+v %v, want the commit's error", i, res[i], errs[i])
		}
	}
	if seen := h.Seen(); len(seen) != 1 {
		t.Errorf("OnCommit called %d times, want once (for the held append)", len(seen))
	}
}
