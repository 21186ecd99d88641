package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/imbridge/imbridge/protocol"
	"github.com/imbridge/imbridge/storage"
)

const (
	// txTimeout bounds every transaction and query of a store, so that a
	// PostgreSQL that does not answer makes calls fail (ErrUnavailable)
	// instead of hang.
	txTimeout = 5 * time.Second
	// connectTimeout bounds one connection attempt to one host, unless the
	// DSN sets connect_timeout.
	connectTimeout = 5 * time.Second
	// openTimeout bounds Open: connecting and migrating the schema.
	openTimeout = 25 * time.Second
	// maxKey bounds the bytes of a user ID and of a client message id: a
	// B-tree index entry of PostgreSQL holds at most about 2.7 KB.
	maxKey = 1000
)

// Store is a history kept in PostgreSQL. Its methods are safe for
// concurrent use, also by several Store values on several nodes sharing one
// database.
type Store struct {
	pool  *pgxpool.Pool
	opts  storage.Options
	epoch string
	w     *storage.Writer

	mu     sync.RWMutex // guards closed
	closed bool

	life      context.Context    // ends at Close: stops running prunes
	stopLife  context.CancelFunc // ends life
	prunes    sync.WaitGroup     // running Prune calls; Add only under mu held for reading, while !closed
	pruneStep func()             // test hook: called before each step of a prune; nil in production
}

var _ storage.Store = (*Store)(nil)

// Open connects to the PostgreSQL database at dsn (a URL or key=value
// string, as pgx reads it; several hosts and target_session_attrs=read-write
// follow a failover), creates or migrates the schema, and starts the writer.
// A nil opts means the defaults; LockTimeout is not used. Open blocks until
// done, ctx ends, or about 25 s pass; an unreachable server is an error
// wrapping storage.ErrUnavailable.
func Open(ctx context.Context, dsn string, opts *storage.Options) (*Store, error) {
	o := opts.WithDefaults()
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("storage: postgres: %w", err)
	}
	if !strings.Contains(dsn, "connect_timeout") {
		cfg.ConnConfig.ConnectTimeout = connectTimeout
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		return nil, fmt.Errorf("storage: postgres: %w", err)
	}
	octx, cancel := context.WithTimeout(ctx, openTimeout)
	defer cancel()
	epoch, err := migrate(octx, pool)
	if err != nil {
		pool.Close()
		if errors.Is(err, storage.ErrForeign) {
			return nil, err
		}
		return nil, fmt.Errorf("storage: postgres: open %s: %w", redact(cfg), classify(err))
	}
	s := &Store{pool: pool, opts: o, epoch: epoch}
	s.life, s.stopLife = context.WithCancel(context.Background())
	s.w = storage.NewWriter(o, s.commitTx)
	return s, nil
}

// redact names the server of cfg without its password.
func redact(cfg *pgxpool.Config) string {
	return fmt.Sprintf("%s@%s:%d/%s", cfg.ConnConfig.User, cfg.ConnConfig.Host, cfg.ConnConfig.Port, cfg.ConnConfig.Database)
}

// classify wraps err in storage.ErrUnavailable unless PostgreSQL answered it
// with an error of the statement itself.
func classify(err error) error {
	if err == nil || errors.Is(err, storage.ErrUnavailable) {
		return err
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case strings.HasPrefix(pgErr.Code, "08"), // connection exception
			strings.HasPrefix(pgErr.Code, "57P"), // shutting down, cannot connect now
			pgErr.Code == "25006",                // read-only transaction: a standby, not yet promoted
			pgErr.Code == "53300":                // too many connections
		default:
			return err
		}
	}
	return fmt.Errorf("%w: %w", storage.ErrUnavailable, err)
}

// Epoch returns the random identity of the history, fixed when the schema
// was created.
func (s *Store) Epoch() string { return s.epoch }

// Stats returns the writer's counters (of this Store, not the cluster's).
func (s *Store) Stats() storage.Stats { return s.w.Stats() }

// Append stores m in PostgreSQL and returns once its transaction committed;
// see storage.Store. Appends of this Store share transactions; those of
// other Stores on the same database are ordered by the counter rows they
// lock, so that seqs and inboxSeqs are gap-free in commit order.
func (s *Store) Append(ctx context.Context, m protocol.Message) (storage.Appended, error) {
	return s.w.Append(ctx, m)
}

// counterKeys returns the counter rows an append needs.
func counterKeys(m *protocol.Message, ckey string) []string {
	return []string{"c" + ckey, "u" + m.From, "u" + m.To, "b" + m.From}
}

// check refuses what PostgreSQL would refuse, before any statement, so that
// the writer knows which append of a batch is bad.
func check(m *protocol.Message) error {
	for _, v := range []string{m.From, m.To, m.ClientMsgID} {
		if len(v) > maxKey {
			return fmt.Errorf("storage: postgres: user or client id of %d bytes, over %d", len(v), maxKey)
		}
		if strings.IndexByte(v, 0) >= 0 {
			return errors.New("storage: postgres: NUL byte in a user or client id")
		}
	}
	return nil
}

type dedupeKey struct{ sender, id string }

// commitTx writes reqs in one transaction (a storage.CommitFunc).
func (s *Store) commitTx(reqs []*storage.Request) (bad int, err error) {
	keySet := map[string]bool{}
	var senders, ids []string
	for i, r := range reqs {
		r.Res, r.Err = storage.Appended{}, nil
		if err := check(&r.Msg); err != nil {
			return i, err
		}
		for _, k := range counterKeys(&r.Msg, string(storage.ConversationKey(r.Msg.From, r.Msg.To))) {
			keySet[k] = true
		}
		if r.Msg.ClientMsgID != "" {
			senders, ids = append(senders, r.Msg.From), append(ids, r.Msg.ClientMsgID)
		}
	}
	keys := make([]string, 0, len(keySet))
	for k := range keySet {
		keys = append(keys, k)
	}
	slices.Sort(keys) // bytewise, as COLLATE "C": every node locks in this order

	ctx, cancel := context.WithTimeout(context.Background(), txTimeout)
	defer cancel()
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		counters, stored, err := lockCounters(ctx, tx, keys, senders, ids)
		if err != nil {
			return err
		}
		w := newWrites()
		fresh := map[dedupeKey]*storage.Request{}
		for _, r := range reqs {
			s.apply(r, counters, stored, fresh, w)
		}
		return w.send(ctx, tx, counters)
	})
	if err != nil {
		return -1, fmt.Errorf("storage: postgres: commit: %w", classify(err))
	}
	return -1, nil
}

// lockCounters creates the missing counter rows of keys, locks them all in
// key order, and then reads the stored messages of the (sender, id) pairs:
// after the locks, so that it sees a commit of the same sender on another
// node.
func lockCounters(ctx context.Context, tx pgx.Tx, keys, senders, ids []string) (map[string]uint64, map[dedupeKey]storage.Appended, error) {
	b := &pgx.Batch{}
	b.Queue(`INSERT INTO counters (key, value) SELECT k, 0 FROM unnest($1::text[]) AS k ON CONFLICT DO NOTHING`, keys)
	b.Queue(`SELECT key, value FROM counters WHERE key = ANY($1::text[]) ORDER BY key FOR UPDATE`, keys)
	if len(senders) > 0 {
		b.Queue(`SELECT body, from_inbox, to_inbox FROM messages
			WHERE client_id <> '' AND (sender, client_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))`, senders, ids)
	}
	res := tx.SendBatch(ctx, b)
	defer res.Close()
	if _, err := res.Exec(); err != nil {
		return nil, nil, err
	}
	counters := make(map[string]uint64, len(keys))
	rows, err := res.Query()
	if err != nil {
		return nil, nil, err
	}
	var key string
	var value int64
	if _, err := pgx.ForEachRow(rows, []any{&key, &value}, func() error {
		counters[key] = uint64(value)
		return nil
	}); err != nil {
		return nil, nil, err
	}
	stored := map[dedupeKey]storage.Appended{}
	if len(senders) > 0 {
		rows, err := res.Query()
		if err != nil {
			return nil, nil, err
		}
		var body []byte
		var from, to int64
		if _, err := pgx.ForEachRow(rows, []any{&body, &from, &to}, func() error {
			a := storage.Appended{Encoded: body, FromInboxSeq: uint64(from), ToInboxSeq: uint64(to), Duplicate: true}
			if err := json.Unmarshal(body, &a.Message); err != nil {
				return fmt.Errorf("storage: postgres: decode stored message: %w", err)
			}
			stored[dedupeKey{a.Message.From, a.Message.ClientMsgID}] = a
			return nil
		}); err != nil {
			return nil, nil, err
		}
	}
	return counters, stored, res.Close()
}

// apply decides one append against the locked counters, which it advances,
// and adds its rows to w: a duplicate of a stored message or of one earlier
// in the batch, a refusal over the quota, or a new message.
func (s *Store) apply(r *storage.Request, counters map[string]uint64, stored map[dedupeKey]storage.Appended, fresh map[dedupeKey]*storage.Request, w *writes) {
	m := r.Msg
	dk := dedupeKey{m.From, m.ClientMsgID}
	if m.ClientMsgID != "" {
		if a, ok := stored[dk]; ok {
			r.Res = a
			return
		}
		if first, ok := fresh[dk]; ok {
			r.Res = first.Res
			r.Res.Duplicate = true
			return
		}
	}
	ckey := string(storage.ConversationKey(m.From, m.To))
	m.Seq = counters["c"+ckey] + 1
	value := protocol.WithUint(r.Enc, "seq", m.Seq)
	used := counters["b"+m.From] + uint64(len(value))
	if s.opts.MaxUserBytes > 0 && used > s.opts.MaxUserBytes {
		r.Err = storage.ErrQuotaExceeded
		return
	}
	counters["c"+ckey] = m.Seq
	counters["b"+m.From] = used
	counters["u"+m.From]++
	fromSeq := counters["u"+m.From]
	toSeq := fromSeq
	if m.To != m.From {
		counters["u"+m.To]++
		toSeq = counters["u"+m.To]
	}
	w.message(ckey, &m, fromSeq, toSeq, value)
	r.Res = storage.Appended{Message: m, Encoded: value, FromInboxSeq: fromSeq, ToInboxSeq: toSeq}
	if m.ClientMsgID != "" {
		fresh[dk] = r
	}
}

// writes are the rows of one commit, as columns for unnest.
type writes struct {
	conv, sender, recipient, clientID []string
	seq, timeMs, fromInbox, toInbox   []int64
	body                              [][]byte
	inboxUser, inboxConv              []string
	inboxSeq, inboxMsgSeq             []int64
}

func newWrites() *writes { return &writes{} }

func (w *writes) message(ckey string, m *protocol.Message, fromSeq, toSeq uint64, value []byte) {
	w.conv = append(w.conv, ckey)
	w.seq = append(w.seq, int64(m.Seq))
	w.sender = append(w.sender, m.From)
	w.recipient = append(w.recipient, m.To)
	w.clientID = append(w.clientID, m.ClientMsgID)
	w.timeMs = append(w.timeMs, m.Time)
	w.fromInbox = append(w.fromInbox, int64(fromSeq))
	w.toInbox = append(w.toInbox, int64(toSeq))
	w.body = append(w.body, value)
	w.inbox(m.From, fromSeq, ckey, m.Seq)
	if m.To != m.From {
		w.inbox(m.To, toSeq, ckey, m.Seq)
	}
}

func (w *writes) inbox(user string, inboxSeq uint64, ckey string, seq uint64) {
	w.inboxUser = append(w.inboxUser, user)
	w.inboxSeq = append(w.inboxSeq, int64(inboxSeq))
	w.inboxConv = append(w.inboxConv, ckey)
	w.inboxMsgSeq = append(w.inboxMsgSeq, int64(seq))
}

// send writes the rows and the counters in one round trip.
func (w *writes) send(ctx context.Context, tx pgx.Tx, counters map[string]uint64) error {
	if len(w.conv) == 0 {
		return nil // duplicates and refusals only
	}
	keys := make([]string, 0, len(counters))
	values := make([]int64, 0, len(counters))
	for k, v := range counters {
		keys, values = append(keys, k), append(values, int64(v))
	}
	b := &pgx.Batch{}
	b.Queue(`INSERT INTO messages (conv, seq, sender, recipient, client_id, time_ms, from_inbox, to_inbox, body)
		SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::bigint[], $8::bigint[], $9::bytea[])`,
		w.conv, w.seq, w.sender, w.recipient, w.clientID, w.timeMs, w.fromInbox, w.toInbox, w.body)
	b.Queue(`INSERT INTO inbox (usr, inbox_seq, conv, seq) SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::bigint[])`,
		w.inboxUser, w.inboxSeq, w.inboxConv, w.inboxMsgSeq)
	b.Queue(`UPDATE counters c SET value = v.value FROM unnest($1::text[], $2::bigint[]) AS v(key, value)
		WHERE c.key = v.key AND c.value <> v.value`, keys, values)
	return tx.SendBatch(ctx, b).Close()
}

// Close stops accepting appends, commits those already queued, stops a
// running Prune, and closes the connections. It blocks until then. Calls
// after the first return nil.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.stopLife()
	s.mu.Unlock()
	s.w.Close()
	s.prunes.Wait()
	s.pool.Close()
	return nil
}

// open reports whether the store is open.
func (s *Store) open() bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return !s.closed
}
