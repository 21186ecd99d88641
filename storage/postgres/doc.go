// Package postgres is the PostgreSQL backend of storage.Store, for a
// cluster of imbridge nodes sharing one history.
//
// # Basics
//
// [Open] connects (pgx's pool, github.com/jackc/pgx/v5), creates or migrates
// the schema, and returns a [Store]. Appends go through the same group commit
// as the bbolt backend (storage.Writer): one transaction per batch. A
// transaction first creates and then locks, in one key order shared by every
// node, the counter rows its appends need (conversation seq, each user's
// inboxSeq, each sender's stored bytes), then reads the (sender, client id)
// pairs already stored, then writes the messages, inbox entries and counters.
// So concurrent writers on several nodes neither deadlock nor leave holes:
// seq and inboxSeq are gap-free in commit order, and a retry on another node
// is stored once (the pair is also a unique key).
//
// The schema is versioned in the table schema_migrations; Open applies the
// missing migrations in one transaction holding an advisory lock, so that
// nodes starting together are safe. The epoch is fixed in the table meta
// when the schema is created.
//
// # Caveats
//
// All methods are safe for concurrent use. Every statement runs under a
// deadline (5 s): when PostgreSQL cannot be reached, calls fail with an
// error wrapping storage.ErrUnavailable instead of hanging, and the pool
// reconnects by itself once it is back, also to a promoted standby when the
// DSN names both hosts with target_session_attrs=read-write. Prune runs on
// one node at a time (a session advisory lock); a second node's Prune
// returns 0 at once. Stats counts this Store's commits only.
package postgres
