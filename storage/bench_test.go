package storage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/imbridge/imbridge/protocol"
)

// benchAppend runs b.N appends from `senders` goroutines, each waiting for
// its append as a device waits for its PUBACK.
func benchAppend(b *testing.B, senders int) {
	s, err := OpenBolt(filepath.Join(b.TempDir(), "h.db"), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	data := json.RawMessage(`{"text":"hello, this is a typical short chat message"}`)
	b.ReportAllocs()
	b.ResetTimer()
	runSenders(b, senders, func(sender int64) error {
		_, err := s.Append(context.Background(), protocol.Message{ID: "x", From: fmt.Sprintf("u%d", sender), To: "hub", Time: 1, Data: data})
		return err
	})
	b.StopTimer()
	st := s.Stats()
	b.ReportMetric(float64(st.Appended)/float64(st.Commits), "msgs/commit")
}

func BenchmarkAppend1(b *testing.B)  { benchAppend(b, 1) }
func BenchmarkAppend16(b *testing.B) { benchAppend(b, 16) }

// benchBoltBatch is the baseline: bbolt's own db.Batch with the same
// concurrency, writing one key per call.
func benchBoltBatch(b *testing.B, senders int) {
	db, err := bolt.Open(filepath.Join(b.TempDir(), "b.db"), 0o600, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucket([]byte("b")); return err })
	val := make([]byte, 200)
	b.ResetTimer()
	runSenders(b, senders, func(int64) error {
		return db.Batch(func(tx *bolt.Tx) error {
			bk := tx.Bucket([]byte("b"))
			seq, _ := bk.NextSequence()
			return bk.Put(u64(seq), val)
		})
	})
}

// runSenders calls op b.N times in all from exactly `senders` goroutines.
func runSenders(b *testing.B, senders int, op func(sender int64) error) {
	var next, id atomic.Int64
	var wg sync.WaitGroup
	for range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sender := id.Add(1)
			for next.Add(1) <= int64(b.N) {
				if err := op(sender); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

func BenchmarkBoltBatch1(b *testing.B)  { benchBoltBatch(b, 1) }
func BenchmarkBoltBatch16(b *testing.B) { benchBoltBatch(b, 16) }

// BenchmarkBoltUpdate1 is one fsynced Update per message: the cost of one
// commit on this disk.
func BenchmarkBoltUpdate1(b *testing.B) {
	db, err := bolt.Open(filepath.Join(b.TempDir(), "u.db"), 0o600, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucket([]byte("b")); return err })
	val := make([]byte, 200)
	for i := 0; i < b.N; i++ {
		db.Update(func(tx *bolt.Tx) error { return tx.Bucket([]byte("b")).Put(u64(uint64(i)), val) })
	}
}

func BenchmarkHistoryNewest50(b *testing.B) {
	s, err := OpenBolt(filepath.Join(b.TempDir(), "h.db"), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	for i := range 2000 {
		s.Append(context.Background(), msg("alice", "bob", "", i))
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if p, err := s.History("alice", "bob", HistoryFilter{Limit: 50}); err != nil || len(p.Messages) != 50 {
			b.Fatal(err)
		}
	}
}

// BenchmarkPrunePass200k times a prune pass over 200,000 conversations with
// nothing to remove (ns/op) while one sender appends flat out, and reports
// that sender's append latencies during the passes, and how long Close
// takes when called in the middle of a pass.
func BenchmarkPrunePass200k(b *testing.B) {
	s, err := OpenBolt(filepath.Join(b.TempDir(), "h.db"), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	now := time.Now()
	fillConversations(b, s, "", 200_000, now)
	r := Retention{MaxAge: time.Hour}
	var lat []time.Duration // owned by the sender until done
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			start := time.Now()
			if _, err := s.Append(context.Background(), msg("x", "y", "", i)); err != nil {
				b.Error(err)
				return
			}
			lat = append(lat, time.Since(start))
		}
	}()
	b.ResetTimer()
	for range b.N {
		if _, err := s.Prune(context.Background(), r, now); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	close(stop)
	<-done
	slices.Sort(lat)
	ms := func(d time.Duration) float64 { return float64(d) / 1e6 }
	b.ReportMetric(float64(len(lat))/float64(b.N), "appends/pass")
	b.ReportMetric(ms(lat[len(lat)/2]), "append-p50-ms")
	b.ReportMetric(ms(lat[len(lat)*99/100]), "append-p99-ms")
	b.ReportMetric(ms(lat[len(lat)-1]), "append-max-ms")

	half := make(chan struct{})
	steps := 0
	s.pruneStep = func() {
		if steps++; steps == 100 {
			close(half)
		}
	}
	pruned := make(chan error, 1)
	go func() { _, err := s.Prune(context.Background(), r, now); pruned <- err }()
	<-half
	start := time.Now()
	s.Close()
	b.ReportMetric(ms(time.Since(start)), "close-ms")
	if err := <-pruned; !errors.Is(err, ErrClosed) {
		b.Errorf("prune stopped by Close: %v", err)
	}
}
