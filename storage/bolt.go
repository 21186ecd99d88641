package storage

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/imbridge/imbridge/protocol"
)

// formatVersion is written into new files and checked by Open. Open
// migrates files of formatV3, which lack the per-sender byte counters, by
// counting once (see migrateV3).
const (
	formatVersion = "4"
	formatV3      = "3"
)

// The file has five flat buckets. Keys that belong together share a prefix
// ending in 0x00, which no user ID contains, so that one conversation or one
// inbox is a contiguous key range in seq order. (One bucket per conversation
// or inbox would dirty several more pages per message.)
var (
	bucketMeta   = []byte("meta")   // "version", "epoch"
	bucketMsg    = []byte("msg")    // conversation key 0x00 seq -> record header + Message JSON (with seq)
	bucketInbox  = []byte("inbox")  // user 0x00 inboxSeq -> seq + conversation key
	bucketSeq    = []byte("seq")    // "c" conversation key, "u" user -> last seq, last inboxSeq; "b" sender -> bytes stored
	bucketDedupe = []byte("dedupe") // sender 0x00 client id -> seq, from and to inboxSeq, conversation key
	keyVersion   = []byte("version")
	keyEpoch     = []byte("epoch")
)

// Bolt is a history in one bbolt file. Its methods are safe for concurrent
// use.
type Bolt struct {
	db    *bolt.DB
	opts  Options
	epoch string
	w     *Writer

	mu     sync.RWMutex // guards closed
	closed bool

	stopPrunes context.CancelFunc // cancels life: called by Close to stop running prunes
	life       context.Context    // ends at Close
	prunes     sync.WaitGroup     // running Prune calls; Add only under mu held for reading, while !closed
	pruneStep  func()             // test hook: called before each step of a prune; nil in production
}

// OpenBolt opens the history at path, creating it (mode 0600) if needed. It
// returns ErrLocked if another process holds the file past
// Options.LockTimeout, and ErrForeign if the file is not an imbridge history.
//
// A file of the previous format (3) is migrated in place, in one
// transaction: Open reads every stored message once to count each sender's
// bytes (see Options.MaxUserBytes), which takes time in proportion to the
// history (0.6 s for 200,000 messages from 200,000 senders on a shared 2-core
// machine). An imbridge older than this one then refuses the file as
// ErrForeign.
func OpenBolt(path string, opts *Options) (*Bolt, error) {
	o := opts.WithDefaults()
	db, err := bolt.Open(path, 0o600, &bolt.Options{
		Timeout:      o.LockTimeout,
		FreelistType: bolt.FreelistMapType,
	})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("%w: %s", ErrLocked, path)
	}
	if err != nil {
		return nil, fmt.Errorf("storage: open %s: %w", path, err)
	}
	s := &Bolt{db: db, opts: o}
	s.life, s.stopPrunes = context.WithCancel(context.Background())
	if err := db.Update(s.initialize); err != nil {
		db.Close()
		return nil, err
	}
	s.w = NewWriter(o, s.commitTx)
	return s, nil
}

// initialize creates the buckets of a new file, or checks an existing one.
func (s *Bolt) initialize(tx *bolt.Tx) error {
	meta := tx.Bucket(bucketMeta)
	if meta == nil {
		if k, _ := tx.Cursor().First(); k != nil {
			return ErrForeign // a bbolt file with other buckets
		}
		// a new file
		var err error
		if meta, err = tx.CreateBucket(bucketMeta); err != nil {
			return err
		}
		var b [8]byte
		if _, err := rand.Read(b[:]); err != nil {
			return err
		}
		if err := meta.Put(keyVersion, []byte(formatVersion)); err != nil {
			return err
		}
		if err := meta.Put(keyEpoch, []byte(hex.EncodeToString(b[:]))); err != nil {
			return err
		}
	}
	version := string(meta.Get(keyVersion))
	if version != formatVersion && version != formatV3 {
		return fmt.Errorf("%w: format version %q, want %q", ErrForeign, version, formatVersion)
	}
	s.epoch = string(meta.Get(keyEpoch))
	for _, name := range [][]byte{bucketMsg, bucketInbox, bucketSeq, bucketDedupe} {
		if _, err := tx.CreateBucketIfNotExists(name); err != nil {
			return err
		}
	}
	if version == formatV3 {
		if err := migrateV3(tx); err != nil {
			return fmt.Errorf("storage: migrate from format 3: %w", err)
		}
		return meta.Put(keyVersion, []byte(formatVersion))
	}
	return nil
}

// migrateV3 writes the per-sender byte counters that format 3 lacks, from a
// pass over every stored message.
func migrateV3(tx *bolt.Tx) error {
	used := map[string]uint64{}
	err := tx.Bucket(bucketMsg).ForEach(func(_, v []byte) error {
		if from, _, err := recordSender(v); err == nil { // as Prune, which then does not count it down
			used[from] += uint64(len(v) - recordHeader)
		}
		return nil
	})
	if err != nil {
		return err
	}
	seqs := tx.Bucket(bucketSeq)
	for _, from := range slices.Sorted(maps.Keys(used)) { // in key order: bbolt splits nodes only at commit
		if err := seqs.Put(bytesKey(from), u64(used[from])); err != nil {
			return err
		}
	}
	return nil
}

// Epoch returns the random identity of this history file, fixed at creation.
// A different epoch means a different (reset) history.
func (s *Bolt) Epoch() string { return s.epoch }

// Stats returns the writer's counters.
func (s *Bolt) Stats() Stats { return s.w.Stats() }

// Append stores m durably and returns its sequence numbers. m.From, m.To,
// m.ID and m.Time must be set, and m.Data must be valid JSON (it is stored as
// it is); m.Seq and m.InboxSeq are ignored. A message
// whose (From, ClientMsgID) was stored before is not stored again: Append
// returns the earlier result with Duplicate set.
//
// Append returns ErrQuotaExceeded, and stores nothing, when m would take its
// sender over Options.MaxUserBytes. It blocks until the commit holding m is
// fsynced, ctx ends (the message may still be committed: retry with the same
// ClientMsgID), or the store is closed (ErrClosed). An append that makes its
// commit fail is retried alone, and the others of the commit without it: an
// error is this append's own, or that of a commit that failed even with m
// alone in it.
func (s *Bolt) Append(ctx context.Context, m protocol.Message) (Appended, error) {
	return s.w.Append(ctx, m)
}

// commitTx writes reqs in one transaction (a CommitFunc for the Writer).
func (s *Bolt) commitTx(reqs []*Request) (bad int, err error) {
	bad = -1
	err = s.db.Update(func(tx *bolt.Tx) error {
		for i, r := range reqs {
			if err := s.apply(tx, r); err != nil {
				bad = i
				return err
			}
		}
		return nil
	})
	if err != nil {
		return bad, fmt.Errorf("storage: commit: %w", err)
	}
	return -1, nil
}

// apply writes one append inside tx and fills r.Res, or sets r.Err to
// ErrQuotaExceeded and writes nothing. It returns the errors that fail the
// transaction.
func (s *Bolt) apply(tx *bolt.Tx, r *Request) error {
	r.Res, r.Err = Appended{}, nil // a retry after a rollback starts afresh
	m := r.Msg
	var dkey []byte
	if m.ClientMsgID != "" {
		dkey = joinKey([]byte(m.From), []byte(m.ClientMsgID))
		if rec := tx.Bucket(bucketDedupe).Get(dkey); rec != nil {
			res, err := loadDuplicate(tx, rec)
			if err != nil {
				return err
			}
			r.Res = res
			return nil
		}
	}
	ckey := ConversationKey(m.From, m.To)
	seqs := tx.Bucket(bucketSeq)
	ckeySeq := append([]byte{'c'}, ckey...)
	m.Seq = counter(seqs, ckeySeq) + 1
	value := protocol.WithUint(r.Enc, "seq", m.Seq)
	bkey := bytesKey(m.From)
	used := counter(seqs, bkey) + uint64(len(value))
	if s.opts.MaxUserBytes > 0 && used > s.opts.MaxUserBytes {
		r.Err = ErrQuotaExceeded
		return nil
	}
	if err := seqs.Put(ckeySeq, u64(m.Seq)); err != nil {
		return err
	}
	if err := seqs.Put(bkey, u64(used)); err != nil {
		return err
	}
	ref := append(u64(m.Seq), ckey...)
	fromSeq, err := appendInbox(tx, m.From, ref)
	if err != nil {
		return err
	}
	toSeq := fromSeq
	if m.To != m.From {
		if toSeq, err = appendInbox(tx, m.To, ref); err != nil {
			return err
		}
	}
	if err := tx.Bucket(bucketMsg).Put(joinKey(ckey, u64(m.Seq)), record(m, fromSeq, toSeq, value)); err != nil {
		return err
	}
	if dkey != nil {
		rec := make([]byte, 0, 24+len(ckey))
		rec = binary.BigEndian.AppendUint64(rec, m.Seq)
		rec = binary.BigEndian.AppendUint64(rec, fromSeq)
		rec = binary.BigEndian.AppendUint64(rec, toSeq)
		rec = append(rec, ckey...)
		if err := tx.Bucket(bucketDedupe).Put(dkey, rec); err != nil {
			return err
		}
	}
	r.Res = Appended{Message: m, Encoded: value, FromInboxSeq: fromSeq, ToInboxSeq: toSeq}
	return nil
}

func loadDuplicate(tx *bolt.Tx, rec []byte) (Appended, error) {
	if len(rec) < 24 {
		return Appended{}, fmt.Errorf("storage: corrupt dedupe record")
	}
	value, m, err := loadMessage(tx, rec[24:], binary.BigEndian.Uint64(rec))
	if err != nil {
		return Appended{}, err
	}
	return Appended{
		Message:      m,
		Encoded:      value,
		FromInboxSeq: binary.BigEndian.Uint64(rec[8:]),
		ToInboxSeq:   binary.BigEndian.Uint64(rec[16:]),
		Duplicate:    true,
	}, nil
}

// counter returns the counter at key in the seq bucket, zero if unset.
func counter(seqs *bolt.Bucket, key []byte) uint64 {
	if v := seqs.Get(key); len(v) == 8 {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

// bump increments the counter at key in the seq bucket and returns it.
func bump(seqs *bolt.Bucket, key []byte) (uint64, error) {
	n := counter(seqs, key) + 1
	return n, seqs.Put(key, u64(n))
}

// bytesKey returns the seq bucket key of the bytes stored by sender.
func bytesKey(sender string) []byte { return append([]byte{'b'}, sender...) }

func appendInbox(tx *bolt.Tx, user string, ref []byte) (uint64, error) {
	n, err := bump(tx.Bucket(bucketSeq), append([]byte{'u'}, user...))
	if err != nil {
		return 0, err
	}
	return n, tx.Bucket(bucketInbox).Put(joinKey([]byte(user), u64(n)), ref)
}

// recordHeader is the size of what a message record holds before its JSON:
// the message's inboxSeq in the inbox of each of the conversation's two
// users, in ConversationKey order, and its time (Unix ms). Pruning needs
// them to remove the inbox entries with the message.
const recordHeader = 24

func record(m protocol.Message, fromSeq, toSeq uint64, json []byte) []byte {
	a, b := fromSeq, toSeq
	if m.To < m.From {
		a, b = toSeq, fromSeq
	}
	v := make([]byte, 0, recordHeader+len(json))
	v = binary.BigEndian.AppendUint64(v, a)
	v = binary.BigEndian.AppendUint64(v, b)
	v = binary.BigEndian.AppendUint64(v, uint64(m.Time))
	return append(v, json...)
}

// recordJSON returns the JSON of a message record.
func recordJSON(v []byte) ([]byte, error) {
	if len(v) < recordHeader {
		return nil, fmt.Errorf("storage: corrupt message record")
	}
	return v[recordHeader:], nil
}

// loadMessage returns the stored JSON and the decoded message seq of the
// conversation ckey.
func loadMessage(tx *bolt.Tx, ckey []byte, seq uint64) ([]byte, protocol.Message, error) {
	var m protocol.Message
	rec := tx.Bucket(bucketMsg).Get(joinKey(ckey, u64(seq)))
	if rec == nil {
		return nil, m, fmt.Errorf("storage: missing message %d of %q", seq, ckey)
	}
	v, err := recordJSON(rec)
	if err != nil {
		return nil, m, err
	}
	if err := json.Unmarshal(v, &m); err != nil {
		return nil, m, fmt.Errorf("storage: decode message %d of %q: %w", seq, ckey, err)
	}
	return v, m, nil
}

// Close stops accepting appends, commits those already queued, stops a
// running Prune (which returns ErrClosed after at most one more step), and
// closes the file. It blocks until then. Calls after the first return nil.
func (s *Bolt) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.stopPrunes()
	s.mu.Unlock()
	s.w.Close()
	s.prunes.Wait()
	return s.db.Close()
}

// joinKey returns prefix 0x00 rest: the key of an entry in a group.
func joinKey(prefix, rest []byte) []byte {
	k := make([]byte, 0, len(prefix)+1+len(rest))
	k = append(k, prefix...)
	k = append(k, 0)
	return append(k, rest...)
}

func u64(v uint64) []byte { return binary.BigEndian.AppendUint64(make([]byte, 0, 8), v) }
