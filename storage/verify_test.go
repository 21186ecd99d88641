package storage

import (
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// corruptFreelist empties the freelist of the bbolt file at path, in place:
// every free page then counts as unreachable, one Check error each.
func corruptFreelist(t *testing.T, path string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// A meta page: page header (16 bytes), magic, version, page size, flags
	// (4 each), root bucket (16), freelist pgid, high water mark, txid (8 each).
	meta := make([]byte, 80)
	if _, err := f.ReadAt(meta, 0); err != nil {
		t.Fatal(err)
	}
	pageSize := int64(binary.LittleEndian.Uint32(meta[24:]))
	other := make([]byte, 80)
	if _, err := f.ReadAt(other, pageSize); err != nil {
		t.Fatal(err)
	}
	if binary.LittleEndian.Uint64(other[64:]) > binary.LittleEndian.Uint64(meta[64:]) {
		meta = other // the newer meta
	}
	freelist := int64(binary.LittleEndian.Uint64(meta[48:]))
	if _, err := f.WriteAt([]byte{0, 0}, freelist*pageSize+10); err != nil { // the page's count
		t.Fatal(err)
	}
}

// TestVerifyStopsItsChecker: Verify returns bbolt's first error and leaves
// no goroutine behind when the check finds several.
func TestVerifyStopsItsChecker(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	path := filepath.Join(t.TempDir(), "h.db")
	s, err := OpenBolt(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	fillConversations(t, s, "", 3000, now.Add(-2*time.Hour))
	if _, err := s.Prune(context.Background(), Retention{MaxAge: time.Hour}, now); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := Verify(path, time.Second); err != nil {
		t.Fatalf("before the damage: %v", err)
	}
	corruptFreelist(t, path)
	err = Verify(path, time.Second)
	if err == nil {
		t.Fatal("Verify passed a file with an emptied freelist")
	}
	t.Log(err)
}
