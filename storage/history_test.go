package storage

import (
	"context"
	"math"
	"testing"
)

// TestSyncAfterTheLastSeq: after=2^64-1 is past everything; it must not
// wrap around to the oldest page.
func TestSyncAfterTheLastSeq(t *testing.T) {
	s, _ := openTemp(t, nil)
	for i := 1; i <= 3; i++ {
		if _, err := s.Append(context.Background(), msg("alice", "bob", "", i)); err != nil {
			t.Fatal(err)
		}
	}
	sync, err := s.Sync("bob", HistoryFilter{After: math.MaxUint64, Limit: 10})
	if err != nil || len(sync.Messages) != 0 || sync.More {
		t.Fatalf("sync after 2^64-1: %d messages, more=%v, %v; want none", len(sync.Messages), sync.More, err)
	}
	hist, err := s.History("alice", "bob", HistoryFilter{After: math.MaxUint64, Limit: 10})
	if err != nil || len(hist.Messages) != 0 || hist.More {
		t.Fatalf("history after 2^64-1: %d messages, more=%v, %v; want none", len(hist.Messages), hist.More, err)
	}
	if last, _ := s.Sync("bob", HistoryFilter{After: math.MaxUint64 - 1, Limit: 10}); len(last.Messages) != 0 {
		t.Fatalf("sync after 2^64-2: %+v", last.Messages)
	}
}
