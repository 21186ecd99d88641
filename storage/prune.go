package storage

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

const (
	// pruneBatch bounds the deletions of one write transaction, so that
	// sends waiting for their commit are not held up for long.
	pruneBatch = 1000
	// pruneScan bounds the conversations one read transaction of a prune
	// looks at, so that a step of a prune, and so Close, is short however
	// many conversations there are.
	pruneScan = 1000
)

// Prune removes the messages r no longer keeps, with their inbox entries and
// retry records, and frees their bytes from their senders' quotas
// (Options.MaxUserBytes). It returns how many it removed. Syncs skip what
// was pruned: an inbox's inboxSeqs then have holes.
//
// Prune finds what to remove in read transactions of at most 1000
// conversations, which do not hold up appends, and removes it in write
// transactions of at most 1000 messages. It blocks until done, ctx ends
// (it returns ctx's error) or the store closes (ErrClosed); either stops it
// after at most one more step. It may run while Append is in use.
func (s *Bolt) Prune(ctx context.Context, r Retention, now time.Time) (int, error) {
	if r.MaxAge <= 0 && r.MaxCount == 0 {
		return 0, nil
	}
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return 0, ErrClosed
	}
	s.prunes.Add(1)
	s.mu.RUnlock()
	defer s.prunes.Done()

	cutoff := now.Add(-r.MaxAge).UnixMilli()
	total := 0
	for from := []byte{'c'}; from != nil; {
		if s.pruneStep != nil {
			s.pruneStep()
		}
		select {
		case <-s.life.Done():
			return total, ErrClosed
		case <-ctx.Done():
			return total, ctx.Err()
		default:
		}
		var due []pruneEntry
		var err error
		if due, from, err = s.pruneCandidates(r, cutoff, from); err != nil {
			return total, wrapClosed(err)
		}
		if len(due) > 0 {
			n, err := s.pruneDelete(due)
			total += n
			if err != nil {
				return total, wrapClosed(err)
			}
		}
	}
	return total, nil
}

// pruneEntry is a message a prune removes, with the keys that go with it.
type pruneEntry struct {
	msg            []byte // key in bucketMsg
	inboxA, inboxB []byte // keys in bucketInbox; equal for a note to self
	dedupe         []byte // key in bucketDedupe; nil without a client id
	from           string // the sender, whose stored bytes go down by size; "" if unreadable
	size           uint64
}

// pruneCandidates reads, in one read transaction, the conversations from the
// seq bucket key `from` on, and returns up to pruneBatch messages r no
// longer keeps, oldest first within each conversation, and the key to
// resume from (nil when the pass is over). It looks at no more than
// pruneScan conversations.
func (s *Bolt) pruneCandidates(r Retention, cutoff int64, from []byte) (due []pruneEntry, next []byte, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		msgs := tx.Bucket(bucketMsg).Cursor()
		seqs := tx.Bucket(bucketSeq).Cursor()
		scanned := 0
		for ck, last := seqs.Seek(from); ck != nil && ck[0] == 'c'; ck, last = seqs.Next() {
			if scanned == pruneScan {
				next = bytes.Clone(ck)
				return nil
			}
			scanned++
			ckey := ck[1:]
			users := bytes.SplitN(ckey, []byte{'|'}, 2)
			if len(users) != 2 || len(last) != 8 {
				return fmt.Errorf("storage: corrupt conversation counter %q", ck)
			}
			newest := binary.BigEndian.Uint64(last)
			prefix := joinKey(ckey, nil)
			for k, v := msgs.Seek(prefix); len(k) == len(prefix)+8 && bytes.HasPrefix(k, prefix); k, v = msgs.Next() {
				seq := binary.BigEndian.Uint64(k[len(prefix):])
				if len(v) < recordHeader {
					return fmt.Errorf("storage: corrupt message record %q", k)
				}
				old := r.MaxAge > 0 && int64(binary.BigEndian.Uint64(v[16:])) < cutoff
				surplus := r.MaxCount > 0 && newest-seq >= r.MaxCount
				if !old && !surplus {
					break // the oldest kept message of this conversation
				}
				if len(due) == pruneBatch {
					next = bytes.Clone(ck) // the rest of this conversation next time
					return nil
				}
				e := pruneEntry{
					msg:    bytes.Clone(k),
					inboxA: joinKey(users[0], v[0:8]),
					inboxB: joinKey(users[1], v[8:16]),
					size:   uint64(len(v) - recordHeader),
				}
				if sender, clientID, err := recordSender(v); err == nil {
					e.from = sender
					if clientID != "" {
						e.dedupe = joinKey([]byte(sender), []byte(clientID))
					}
				}
				due = append(due, e)
			}
		}
		return nil
	})
	return due, next, err
}

// pruneDelete removes the messages of due in one write transaction and
// returns how many it removed (those another prune removed first are
// skipped).
func (s *Bolt) pruneDelete(due []pruneEntry) (n int, err error) {
	err = s.db.Update(func(tx *bolt.Tx) error {
		msgs, inbox, dedupe := tx.Bucket(bucketMsg), tx.Bucket(bucketInbox), tx.Bucket(bucketDedupe)
		seqs := tx.Bucket(bucketSeq)
		n = 0
		for _, e := range due {
			if msgs.Get(e.msg) == nil {
				continue
			}
			if err := inbox.Delete(e.inboxA); err != nil {
				return err
			}
			if err := inbox.Delete(e.inboxB); err != nil {
				return err
			}
			if e.dedupe != nil {
				if err := dedupe.Delete(e.dedupe); err != nil {
					return err
				}
			}
			if e.from != "" {
				if err := release(seqs, bytesKey(e.from), e.size); err != nil {
					return err
				}
			}
			if err := msgs.Delete(e.msg); err != nil {
				return err
			}
			n++
		}
		return nil
	})
	if err != nil {
		n = 0
	}
	return n, err
}

// release lowers the byte counter at key by size, removing it at zero.
func release(seqs *bolt.Bucket, key []byte, size uint64) error {
	used := counter(seqs, key)
	if used <= size {
		return seqs.Delete(key)
	}
	return seqs.Put(key, u64(used-size))
}

// recordSender returns the sender and client id of a message record.
func recordSender(rec []byte) (from, clientID string, err error) {
	v, err := recordJSON(rec)
	if err != nil {
		return "", "", err
	}
	var m struct {
		From        string `json:"from"`
		ClientMsgID string `json:"clientMsgId"`
	}
	if err := json.Unmarshal(v, &m); err != nil {
		return "", "", fmt.Errorf("storage: decode message: %w", err)
	}
	return m.From, m.ClientMsgID, nil
}
