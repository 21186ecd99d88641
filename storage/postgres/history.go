package postgres

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/imbridge/imbridge/protocol"
	"github.com/imbridge/imbridge/storage"
)

// History returns a page of the conversation between users a and b, by
// conversation seq; see storage.Store.
func (s *Store) History(a, b string, f storage.HistoryFilter) (storage.Page, error) {
	conv := string(storage.ConversationKey(a, b))
	if f.After > 0 {
		return s.page(f.Limit, f.After, `SELECT 0, body FROM messages WHERE conv = $1 AND seq > $2 ORDER BY seq LIMIT $3`, conv)
	}
	before := int64(math.MaxInt64)
	if f.Before > 0 && f.Before < math.MaxInt64 {
		before = int64(f.Before)
	}
	if f.Limit < 1 {
		return storage.Page{}, fmt.Errorf("storage: limit %d < 1", f.Limit)
	}
	p, err := s.query(f.Limit, `SELECT 0, body FROM messages WHERE conv = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3`, conv, before)
	slices.Reverse(p.Messages)
	return p, err
}

// Sync returns a page of everything stored for user, by inbox seq, with
// each message's InboxSeq set; see storage.Store.
func (s *Store) Sync(user string, f storage.HistoryFilter) (storage.Page, error) {
	return s.page(f.Limit, f.After, `SELECT i.inbox_seq, m.body FROM inbox i JOIN messages m ON m.conv = i.conv AND m.seq = i.seq
		WHERE i.usr = $1 AND i.inbox_seq > $2 ORDER BY i.inbox_seq LIMIT $3`, user)
}

// page reads forward from after.
func (s *Store) page(limit int, after uint64, sql, key string) (storage.Page, error) {
	if limit < 1 {
		return storage.Page{}, fmt.Errorf("storage: limit %d < 1", limit)
	}
	if after >= math.MaxInt64 {
		return storage.Page{}, nil // past any seq a bigint holds
	}
	return s.query(limit, sql, key, int64(after))
}

// query runs a page query whose rows are (inboxSeq or 0, body), asking for
// one row more than limit to learn whether there are more.
func (s *Store) query(limit int, sql, key string, bound int64) (storage.Page, error) {
	if !s.open() {
		return storage.Page{}, storage.ErrClosed
	}
	ctx, cancel := context.WithTimeout(context.Background(), txTimeout)
	defer cancel()
	rows, err := s.pool.Query(ctx, sql, key, bound, limit+1)
	if err != nil {
		return storage.Page{}, fmt.Errorf("storage: postgres: query: %w", classify(err))
	}
	var p storage.Page
	var inboxSeq int64
	var body []byte
	_, err = pgx.ForEachRow(rows, []any{&inboxSeq, &body}, func() error {
		if len(p.Messages) == limit {
			p.More = true
			return nil
		}
		var m protocol.Message
		if err := json.Unmarshal(body, &m); err != nil {
			return fmt.Errorf("storage: postgres: decode message: %w", err)
		}
		m.InboxSeq = uint64(inboxSeq)
		p.Messages = append(p.Messages, m)
		return nil
	})
	if err != nil {
		return storage.Page{}, fmt.Errorf("storage: postgres: query: %w", classify(err))
	}
	return p, nil
}

// pruneBatch bounds the messages one prune transaction removes.
const pruneBatch = 1000

// Prune removes the messages r no longer keeps, with their inbox entries
// and retry records, and frees their bytes from their senders' quotas; see
// storage.Store. It runs on one node of a cluster at a time: while another
// Store's Prune runs on the same database, it returns 0 and nil at once. It
// removes at most 1000 messages per transaction, and stops after at most one
// more when ctx ends or the store closes.
func (s *Store) Prune(ctx context.Context, r storage.Retention, now time.Time) (int, error) {
	if r.MaxAge <= 0 && r.MaxCount == 0 {
		return 0, nil
	}
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return 0, storage.ErrClosed
	}
	s.prunes.Add(1)
	s.mu.RUnlock()
	defer s.prunes.Done()
	if err := ctx.Err(); err != nil {
		return 0, err
	}

	lctx, cancel := context.WithTimeout(ctx, txTimeout)
	conn, err := s.pool.Acquire(lctx)
	cancel()
	if err != nil {
		return 0, fmt.Errorf("storage: postgres: prune: %w", classify(err))
	}
	defer conn.Release()
	var got bool
	lctx, cancel = context.WithTimeout(ctx, txTimeout)
	err = conn.QueryRow(lctx, `SELECT pg_try_advisory_lock($1)`, lockPrune).Scan(&got)
	cancel()
	if err != nil {
		return 0, fmt.Errorf("storage: postgres: prune: %w", classify(err))
	}
	if !got {
		return 0, nil // another node prunes
	}
	defer func() {
		uctx, cancel := context.WithTimeout(context.Background(), txTimeout)
		defer cancel()
		if _, err := conn.Exec(uctx, `SELECT pg_advisory_unlock($1)`, lockPrune); err != nil {
			conn.Conn().Close(uctx) // ending the session releases the lock
		}
	}()

	maxAge := int64(0)
	if r.MaxAge > 0 {
		maxAge = now.Add(-r.MaxAge).UnixMilli()
	}
	maxCount := int64(min(r.MaxCount, math.MaxInt64))
	total := 0
	for {
		if s.pruneStep != nil {
			s.pruneStep()
		}
		select {
		case <-s.life.Done():
			return total, storage.ErrClosed
		case <-ctx.Done():
			return total, ctx.Err()
		default:
		}
		n, more, err := s.pruneStepTx(conn, r.MaxAge > 0, maxAge, maxCount)
		total += n
		if err != nil {
			return total, fmt.Errorf("storage: postgres: prune: %w", classify(err))
		}
		if !more {
			return total, nil
		}
	}
}

// pruneStepTx removes up to pruneBatch messages in one transaction: it
// finds them (as bbolt does, the oldest of each conversation up to the first
// one r keeps, so that a message dated earlier than one before it, from
// another node's clock, is no hole), locks their senders' byte counters in key order (as appends
// do), deletes them with their inbox entries and lowers the counters. more
// says a full batch was found.
func (s *Store) pruneStepTx(conn *pgxpool.Conn, byAge bool, cutoff, maxCount int64) (n int, more bool, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), txTimeout)
	defer cancel()
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		// Two index-driven halves: the surplus of conversations whose
		// counter is over MaxCount (the counters' key range 'c'), and
		// messages older than the cutoff (messages_time) that no kept
		// message precedes in their conversation.
		rows, err := tx.Query(ctx, `SELECT conv, seq, sender FROM (
				(SELECT m.conv, m.seq, m.sender FROM counters c JOIN messages m ON m.conv = substr(c.key, 2) AND m.seq <= c.value - $3
					WHERE $3 > 0 AND c.key >= 'c' AND c.key < 'd' AND c.value > $3
					LIMIT $4)
				UNION
				(SELECT m.conv, m.seq, m.sender FROM messages m JOIN counters c ON c.key = 'c' || m.conv
					WHERE $1 AND m.time_ms < $2
					AND NOT EXISTS (SELECT 1 FROM messages k WHERE k.conv = m.conv AND k.seq < m.seq
						AND k.time_ms >= $2 AND ($3 = 0 OR c.value - k.seq < $3))
					ORDER BY m.time_ms LIMIT $4)
			) AS due LIMIT $4`, byAge, cutoff, maxCount, pruneBatch)
		if err != nil {
			return err
		}
		var convs, keys []string
		var seqs []int64
		var conv, sender string
		var seq int64
		if _, err := pgx.ForEachRow(rows, []any{&conv, &seq, &sender}, func() error {
			convs, seqs, keys = append(convs, conv), append(seqs, seq), append(keys, "b"+sender)
			return nil
		}); err != nil {
			return err
		}
		more = len(convs) == pruneBatch
		if len(convs) == 0 {
			return nil
		}
		slices.Sort(keys)
		keys = slices.Compact(keys)
		b := &pgx.Batch{}
		b.Queue(`SELECT 1 FROM counters WHERE key = ANY($1::text[]) ORDER BY key FOR UPDATE`, keys)
		b.Queue(`WITH gone AS (
				DELETE FROM messages m USING unnest($1::text[], $2::bigint[]) AS d(conv, seq)
				WHERE m.conv = d.conv AND m.seq = d.seq
				RETURNING m.sender, m.recipient, m.from_inbox, m.to_inbox, octet_length(m.body) AS size
			), inboxes AS (
				DELETE FROM inbox i USING gone
				WHERE (i.usr = gone.sender AND i.inbox_seq = gone.from_inbox) OR (i.usr = gone.recipient AND i.inbox_seq = gone.to_inbox)
			), freed AS (
				UPDATE counters c SET value = greatest(c.value - f.size, 0)
				FROM (SELECT 'b' || sender AS key, sum(size)::bigint AS size FROM gone GROUP BY sender) AS f
				WHERE c.key = f.key
			)
			SELECT count(*) FROM gone`, convs, seqs)
		res := tx.SendBatch(ctx, b)
		defer res.Close()
		if _, err := res.Exec(); err != nil {
			return err
		}
		if err := res.QueryRow().Scan(&n); err != nil {
			return err
		}
		return res.Close()
	})
	return n, more, err
}
