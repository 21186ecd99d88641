package storage

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/imbridge/imbridge/protocol"
)

// History returns a page of the conversation between users a and b, by
// conversation seq. A conversation never written is an empty page.
func (s *Bolt) History(a, b string, f HistoryFilter) (Page, error) {
	return s.page(bucketMsg, ConversationKey(a, b), f, func(_ *bolt.Tx, _, rec []byte) (protocol.Message, error) {
		var m protocol.Message
		v, err := recordJSON(rec)
		if err != nil {
			return m, err
		}
		if err := json.Unmarshal(v, &m); err != nil {
			return m, fmt.Errorf("storage: decode message: %w", err)
		}
		return m, nil
	})
}

// Sync returns a page of everything stored for user, by inbox seq, with each
// message's InboxSeq set. It always reads forward from f.After (zero: from
// the first message); f.Before is ignored.
func (s *Bolt) Sync(user string, f HistoryFilter) (Page, error) {
	f.Before, f.forward = 0, true
	return s.page(bucketInbox, []byte(user), f, func(tx *bolt.Tx, k, ref []byte) (protocol.Message, error) {
		if len(ref) < 8 {
			return protocol.Message{}, fmt.Errorf("storage: corrupt inbox entry of %q", user)
		}
		_, m, err := loadMessage(tx, ref[8:], binary.BigEndian.Uint64(ref))
		m.InboxSeq = binary.BigEndian.Uint64(k[len(k)-8:])
		return m, err
	})
}

// page reads one page of the group of keys under group 0x00 in bucket, in a
// read transaction, turning each entry into a message with decode.
func (s *Bolt) page(bucket, group []byte, f HistoryFilter, decode func(tx *bolt.Tx, k, v []byte) (protocol.Message, error)) (Page, error) {
	var p Page
	err := s.db.View(func(tx *bolt.Tx) error {
		return scan(tx.Bucket(bucket).Cursor(), joinKey(group, nil), f, func(k, v []byte) error {
			m, err := decode(tx, k, v)
			if err != nil {
				return err
			}
			p.Messages = append(p.Messages, m)
			return nil
		}, &p.More)
	})
	if err != nil {
		return Page{}, wrapClosed(err)
	}
	return p, nil
}

// scan visits up to f.Limit keys of the form prefix + big-endian uint64, in
// ascending order, as f selects, and sets *more.
func scan(c *bolt.Cursor, prefix []byte, f HistoryFilter, visit func(k, v []byte) error, more *bool) error {
	if f.Limit < 1 {
		return fmt.Errorf("storage: limit %d < 1", f.Limit)
	}
	key := func(n uint64) []byte { return append(append(make([]byte, 0, len(prefix)+8), prefix...), u64(n)...) }
	in := func(k []byte) bool { return len(k) == len(prefix)+8 && bytes.HasPrefix(k, prefix) }
	if f.After > 0 || f.forward {
		if f.After == math.MaxUint64 {
			return nil // nothing follows the last possible seq; After+1 would wrap to the first
		}
		n := 0
		for k, v := c.Seek(key(f.After + 1)); in(k); k, v = c.Next() {
			if n == f.Limit {
				*more = true
				return nil
			}
			if err := visit(k, v); err != nil {
				return err
			}
			n++
		}
		return nil
	}
	// Backwards from Before (or the end of the group), then visit in
	// ascending order.
	end := uint64(math.MaxUint64)
	if f.Before > 0 {
		end = f.Before
	}
	k, v := c.Seek(key(end))
	if k == nil {
		k, v = c.Last()
	} else {
		k, v = c.Prev()
	}
	type kv struct{ k, v []byte }
	var page []kv
	for ; in(k) && len(page) < f.Limit; k, v = c.Prev() {
		page = append(page, kv{k, v})
	}
	*more = in(k)
	for i := len(page) - 1; i >= 0; i-- {
		if err := visit(page[i].k, page[i].v); err != nil {
			return err
		}
	}
	return nil
}

func wrapClosed(err error) error {
	if errors.Is(err, berrors.ErrDatabaseNotOpen) {
		return ErrClosed
	}
	return err
}
