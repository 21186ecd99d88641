package storage

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Retention says which messages Prune removes: those older than MaxAge, and
// all but the newest MaxCount of each conversation. A zero field keeps
// everything by that measure.
type Retention struct {
	MaxAge   time.Duration
	MaxCount uint64
}

// pruneBatch bounds the deletions of one write transaction, so that sends
// waiting for their commit are not held up for long.
const pruneBatch = 1000

// Prune removes the messages r no longer keeps, with their inbox entries and
// retry records, in transactions of at most 1000 messages, and returns how
// many it removed. Syncs skip what was pruned: an inbox's inboxSeqs then
// have holes. It blocks until done, and may run while Append is in use.
func (s *Store) Prune(r Retention, now time.Time) (int, error) {
	if r.MaxAge <= 0 && r.MaxCount == 0 {
		return 0, nil
	}
	cutoff := now.Add(-r.MaxAge).UnixMilli()
	total := 0
	for {
		n, more, err := s.pruneSome(r, cutoff)
		total += n
		if err != nil || !more {
			return total, wrapClosed(err)
		}
	}
}

// pruneSome removes up to pruneBatch messages in one transaction and says
// whether more may be due.
func (s *Store) pruneSome(r Retention, cutoff int64) (n int, more bool, err error) {
	err = s.db.Update(func(tx *bolt.Tx) error {
		msgs, inbox, dedupe := tx.Bucket(bucketMsg), tx.Bucket(bucketInbox), tx.Bucket(bucketDedupe)
		seqs := tx.Bucket(bucketSeq).Cursor()
		for ck, last := seqs.Seek([]byte{'c'}); ck != nil && ck[0] == 'c'; ck, last = seqs.Next() {
			ckey := ck[1:]
			users := bytes.SplitN(ckey, []byte{'|'}, 2)
			if len(users) != 2 || len(last) != 8 {
				return fmt.Errorf("storage: corrupt conversation counter %q", ck)
			}
			newest := binary.BigEndian.Uint64(last)
			prefix := joinKey(ckey, nil)
			c := msgs.Cursor()
			for k, v := c.Seek(prefix); len(k) == len(prefix)+8 && bytes.HasPrefix(k, prefix); k, v = c.Seek(prefix) {
				seq := binary.BigEndian.Uint64(k[len(prefix):])
				if len(v) < recordHeader {
					return fmt.Errorf("storage: corrupt message record %q", k)
				}
				old := r.MaxAge > 0 && int64(binary.BigEndian.Uint64(v[16:])) < cutoff
				surplus := r.MaxCount > 0 && newest-seq >= r.MaxCount
				if !old && !surplus {
					break // the oldest kept message of this conversation
				}
				if n == pruneBatch {
					more = true
					return nil
				}
				if err := inbox.Delete(joinKey(users[0], v[0:8])); err != nil {
					return err
				}
				if err := inbox.Delete(joinKey(users[1], v[8:16])); err != nil {
					return err
				}
				var m struct {
					From        string `json:"from"`
					ClientMsgID string `json:"clientMsgId"`
				}
				if json.Unmarshal(v[recordHeader:], &m) == nil && m.ClientMsgID != "" {
					if err := dedupe.Delete(joinKey([]byte(m.From), []byte(m.ClientMsgID))); err != nil {
						return err
					}
				}
				if err := msgs.Delete(k); err != nil {
					return err
				}
				n++
			}
		}
		return nil
	})
	return n, more, err
}
