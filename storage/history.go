package storage

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/imbridge/imbridge/protocol"
)

// HistoryFilter selects a page of a conversation or an inbox. After and
// Before are exclusive sequence numbers; with neither, the newest Limit
// entries. Limit must be at least 1.
type HistoryFilter struct {
	After  uint64
	Before uint64
	Limit  int
}

// Page is a slice of history in ascending sequence order. More says that
// further entries exist beyond it in the direction asked (older for Before
// and newest pages, newer for After).
type Page struct {
	Messages []protocol.Message
	More     bool
}

// History returns a page of the conversation between users a and b, by
// conversation seq. A conversation never written is an empty page.
func (s *Store) History(a, b string, f HistoryFilter) (Page, error) {
	return s.page(f, func(tx *bolt.Tx) *bolt.Bucket {
		return tx.Bucket(bucketConv).Bucket(ConversationKey(a, b))
	}, func(_ *bolt.Tx, _, v []byte) (protocol.Message, error) {
		var m protocol.Message
		if err := json.Unmarshal(v, &m); err != nil {
			return m, fmt.Errorf("storage: decode message: %w", err)
		}
		return m, nil
	})
}

// Sync returns a page of everything stored for user, by inbox seq, with each
// message's InboxSeq set.
func (s *Store) Sync(user string, f HistoryFilter) (Page, error) {
	return s.page(f, func(tx *bolt.Tx) *bolt.Bucket {
		return tx.Bucket(bucketInbox).Bucket([]byte(user))
	}, func(tx *bolt.Tx, k, ref []byte) (protocol.Message, error) {
		if len(ref) < 8 {
			return protocol.Message{}, fmt.Errorf("storage: corrupt inbox entry of %q", user)
		}
		m, err := loadMessage(tx, ref[8:], binary.BigEndian.Uint64(ref))
		m.InboxSeq = binary.BigEndian.Uint64(k)
		return m, err
	})
}

// page reads one page, in a read transaction, from the bucket find returns
// (nil: an empty page), turning each entry into a message with decode.
func (s *Store) page(f HistoryFilter, find func(*bolt.Tx) *bolt.Bucket, decode func(tx *bolt.Tx, k, v []byte) (protocol.Message, error)) (Page, error) {
	var p Page
	err := s.db.View(func(tx *bolt.Tx) error {
		bucket := find(tx)
		if bucket == nil {
			return nil
		}
		return scan(bucket.Cursor(), f, func(k, v []byte) error {
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

// scan visits up to f.Limit entries of a bucket of big-endian uint64 keys in
// ascending key order, as f selects, and sets *more.
func scan(c *bolt.Cursor, f HistoryFilter, visit func(k, v []byte) error, more *bool) error {
	if f.Limit < 1 {
		return fmt.Errorf("storage: limit %d < 1", f.Limit)
	}
	if f.After > 0 {
		n := 0
		for k, v := c.Seek(u64(f.After + 1)); k != nil; k, v = c.Next() {
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
	// Backwards from Before (or the end), then visit in ascending order.
	var k, v []byte
	if f.Before > 0 {
		k, v = c.Seek(u64(f.Before))
		if k == nil {
			k, v = c.Last()
		} else {
			k, v = c.Prev()
		}
		for k != nil && binary.BigEndian.Uint64(k) >= f.Before {
			k, v = c.Prev()
		}
	} else {
		k, v = c.Last()
	}
	type kv struct{ k, v []byte }
	var page []kv
	for ; k != nil && len(page) < f.Limit; k, v = c.Prev() {
		page = append(page, kv{k, v})
	}
	*more = k != nil
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
