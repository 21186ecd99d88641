package storage

import (
	"context"
	"log/slog"
	"time"

	"github.com/imbridge/imbridge/protocol"
)

// Store is a message history: the contract of a backend, bbolt ([OpenBolt])
// on one node or PostgreSQL (package storage/postgres) in a cluster. Its
// methods are safe for concurrent use. The package storagetest checks a
// backend against it.
type Store interface {
	// Append stores m durably and returns its sequence numbers. m.From,
	// m.To, m.ID and m.Time must be set, and m.Data must be valid JSON;
	// m.Seq and m.InboxSeq are ignored. A message whose (From, ClientMsgID)
	// was stored before is not stored again: Append returns the earlier
	// result with Duplicate set. Appends share commits (group commit);
	// Options.OnCommit sees them in commit order.
	//
	// Append returns ErrQuotaExceeded, and stores nothing, when m would take
	// its sender over Options.MaxUserBytes; an error wrapping ErrUnavailable
	// when the backend cannot be reached; ErrClosed after Close. It blocks
	// until the commit holding m is durable or ctx ends (then m may still be
	// committed: retry with the same ClientMsgID).
	Append(ctx context.Context, m protocol.Message) (Appended, error)
	// History returns a page of the conversation between users a and b, by
	// conversation seq. A conversation never written is an empty page.
	History(a, b string, f HistoryFilter) (Page, error)
	// Sync returns a page of everything stored for user, by inbox seq, with
	// each message's InboxSeq set. It always reads forward from f.After
	// (zero: from the first message); f.Before is ignored.
	Sync(user string, f HistoryFilter) (Page, error)
	// Prune removes the messages r no longer keeps, with their inbox entries
	// and retry records, frees their bytes from their senders' quotas, and
	// returns how many it removed. It blocks until done, ctx ends or the
	// store closes (ErrClosed).
	Prune(ctx context.Context, r Retention, now time.Time) (int, error)
	// Epoch returns the random identity of the history, fixed at its
	// creation. A different epoch means a different (reset) history.
	Epoch() string
	// Stats returns the writer's counters.
	Stats() Stats
	// Close commits the appends already queued, stops a running Prune and
	// releases the backend. It blocks until then. Calls after the first
	// return nil.
	Close() error
}

var (
	_ Store = (*Bolt)(nil)
)

// Options configures a Store of either backend. A nil *Options, or a zero
// field, means the default written beside each field.
type Options struct {
	// LockTimeout is how long OpenBolt waits for another process to release
	// the file. Default 2s. bbolt only: PostgreSQL ignores it.
	LockTimeout time.Duration
	// MaxBatch caps how many appends share one commit. Default 1024.
	MaxBatch int
	// MaxUserBytes bounds what one user stores: the bytes of the messages
	// they sent that the history still holds (each message counts the length
	// of its stored JSON, the Encoded of its Appended). An Append that would
	// take its sender over the bound fails with ErrQuotaExceeded and stores
	// nothing; the other appends of its commit are not affected. Pruning
	// frees room. A duplicate is answered even over the bound. Zero means
	// no limit; the bytes are counted either way, so a bound set later
	// applies to what is already stored.
	MaxUserBytes uint64
	// OnCommit, when set, is called by the writer goroutine after each commit
	// with the new (non-duplicate) appends in commit order, which is seq order
	// within every conversation and inbox. It runs after the Append calls of
	// the commit have returned (their senders are released first). It must
	// not block for long: the next commit waits for it. The slice is not
	// reused.
	OnCommit func([]Appended)
	// Observe, when set, is called by the writer after each successful commit
	// with its duration (fsync included) and number of appends. It must be
	// quick.
	Observe func(d time.Duration, appends int)
	// Logger receives errors of the writer. Default: discard.
	Logger *slog.Logger
}

// WithDefaults returns a copy of o (nil: the zero Options) with the defaults
// filled in, for a backend.
func (o *Options) WithDefaults() Options {
	var v Options
	if o != nil {
		v = *o
	}
	if v.LockTimeout == 0 {
		v.LockTimeout = 2 * time.Second
	}
	if v.MaxBatch == 0 {
		v.MaxBatch = 1024
	}
	if v.Logger == nil {
		v.Logger = slog.New(slog.DiscardHandler)
	}
	return v
}

// Appended is the result of one Append.
type Appended struct {
	// Message is the stored message with Seq set (InboxSeq is zero: it
	// differs per user). For a duplicate it is the message first stored.
	Message protocol.Message
	// Encoded is Message as stored: JSON with "seq" and without "inboxSeq",
	// ready for protocol.WithUint to add each user's inboxSeq.
	Encoded []byte
	// FromInboxSeq and ToInboxSeq are the message's positions in the sender's
	// and the receiver's inbox; equal when a user writes to themself.
	FromInboxSeq uint64
	ToInboxSeq   uint64
	// Duplicate is true when the (From, ClientMsgID) pair had been stored
	// before; nothing was written.
	Duplicate bool
}

// Stats counts the work of a store's writer since it was opened.
type Stats struct {
	Commits  uint64 // write transactions of appends committed
	Appended uint64 // appends in them, duplicates included, refused ones not
	Queued   int    // appends waiting for the writer now
}

// HistoryFilter selects a page of a conversation or an inbox. After and
// Before are exclusive sequence numbers; with neither, the newest Limit
// entries. Limit must be at least 1.
type HistoryFilter struct {
	After  uint64
	Before uint64
	Limit  int

	forward bool // read forward from After even when it is zero (Sync)
}

// Page is a slice of history in ascending sequence order. More says that
// further entries exist beyond it in the direction asked (older for Before
// and newest pages, newer for After).
type Page struct {
	Messages []protocol.Message
	More     bool
}

// Retention says which messages Prune removes: those older than MaxAge, and
// all but the newest MaxCount of each conversation. A zero field keeps
// everything by that measure.
type Retention struct {
	MaxAge   time.Duration
	MaxCount uint64
}

// ConversationKey returns the bucket key of the conversation between a and b:
// the two IDs in byte order, joined by '|', which no user ID contains.
func ConversationKey(a, b string) []byte {
	if b < a {
		a, b = b, a
	}
	k := make([]byte, 0, len(a)+1+len(b))
	k = append(k, a...)
	k = append(k, '|')
	return append(k, b...)
}
