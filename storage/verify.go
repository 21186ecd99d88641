package storage

import (
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Verify opens the history file at path read-only and runs bbolt's
// consistency check over it, returning the first problem found. It blocks
// while another process holds the file, up to lockTimeout.
func Verify(path string, lockTimeout time.Duration) error {
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: lockTimeout})
	if err != nil {
		return fmt.Errorf("storage: verify %s: %w", path, err)
	}
	defer db.Close()
	return db.View(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketMeta) == nil {
			return fmt.Errorf("%w: %s has no meta bucket", ErrForeign, path)
		}
		var first error
		for err := range tx.Check() { // read to the end: the checker goroutine stops only then
			if first == nil {
				first = fmt.Errorf("storage: verify %s: %w", path, err)
			}
		}
		return first
	})
}
