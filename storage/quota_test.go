package storage

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"

	bolt "go.etcd.io/bbolt"
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
