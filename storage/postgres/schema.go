package postgres

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/imbridge/imbridge/storage"
)

// Advisory lock keys of this package (pg_advisory_*): arbitrary constants,
// the same on every node.
const (
	lockMigrate int64 = 0x696d62_0001 // held by the transaction that migrates the schema
	lockPrune   int64 = 0x696d62_0002 // held by the session of the one node pruning
)

// migrations are the schema versions, in order: migrations[i] takes the
// schema from version i to i+1. Append only; never edit one that shipped.
//
// Counters are rows of counters, keyed like bbolt's seq bucket: "c" and a
// conversation key (last seq), "u" and a user (last inboxSeq), "b" and a
// sender (bytes of their stored messages). Keys compare bytewise (COLLATE
// "C"), as Go compares strings, so that every node locks them in one order.
var migrations = []string{
	`CREATE TABLE meta (
		key   text PRIMARY KEY,
		value text NOT NULL
	);
	CREATE TABLE counters (
		key   text COLLATE "C" PRIMARY KEY,
		value bigint NOT NULL
	);
	CREATE TABLE messages (
		conv       text COLLATE "C" NOT NULL, -- storage.ConversationKey
		seq        bigint NOT NULL,
		sender     text COLLATE "C" NOT NULL,
		recipient  text COLLATE "C" NOT NULL,
		client_id  text COLLATE "C" NOT NULL, -- '' without one
		time_ms    bigint NOT NULL,
		from_inbox bigint NOT NULL,
		to_inbox   bigint NOT NULL,
		body       bytea NOT NULL, -- the message JSON with seq, as storage.Appended.Encoded
		PRIMARY KEY (conv, seq)
	);
	CREATE UNIQUE INDEX messages_dedupe ON messages (sender, client_id) WHERE client_id <> '';
	CREATE INDEX messages_time ON messages (time_ms);
	CREATE TABLE inbox (
		usr       text COLLATE "C" NOT NULL,
		inbox_seq bigint NOT NULL,
		conv      text COLLATE "C" NOT NULL,
		seq       bigint NOT NULL,
		PRIMARY KEY (usr, inbox_seq)
	);`,
}

// migrate brings the schema to the newest version, in one transaction that
// holds an advisory lock, so that nodes starting at once apply each
// migration once; it creates the epoch with a new schema, and returns it.
func migrate(ctx context.Context, pool *pgxpool.Pool) (epoch string, err error) {
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, lockMigrate); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
			version    int PRIMARY KEY,
			applied_at timestamptz NOT NULL DEFAULT now()
		)`); err != nil {
			return err
		}
		var version int
		if err := tx.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM schema_migrations`).Scan(&version); err != nil {
			return err
		}
		if version > len(migrations) {
			return fmt.Errorf("%w: schema version %d is newer than this imbridge's %d", storage.ErrForeign, version, len(migrations))
		}
		for v := version; v < len(migrations); v++ {
			if _, err := tx.Exec(ctx, migrations[v]); err != nil {
				return fmt.Errorf("storage: postgres: migration %d: %w", v+1, err)
			}
			if _, err := tx.Exec(ctx, `INSERT INTO schema_migrations (version) VALUES ($1)`, v+1); err != nil {
				return err
			}
		}
		var b [8]byte
		if _, err := rand.Read(b[:]); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO meta (key, value) VALUES ('epoch', $1) ON CONFLICT DO NOTHING`, hex.EncodeToString(b[:])); err != nil {
			return err
		}
		return tx.QueryRow(ctx, `SELECT value FROM meta WHERE key = 'epoch'`).Scan(&epoch)
	})
	return epoch, err
}
