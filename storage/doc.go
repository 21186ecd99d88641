// Package storage is imbridge's durable message history: the [Store]
// interface, its bbolt backend [Bolt] (one file, one node), and the group
// commit ([Writer]) that every backend shares. The PostgreSQL backend, for a
// cluster, is package storage/postgres; package storage/storagetest runs the
// same conformance cases against both.
//
// # Basics
//
// [OpenBolt] opens (or creates) the file; [Store.Append] writes one stored message
// and returns once it is fsynced; [Store.History] pages through a conversation
// and [Store.Sync] through everything stored for one user; [Store.Prune]
// removes what a [Retention] no longer keeps; [Store.Close] finishes the
// writes under way, stops a prune and closes the file.
//
// Every conversation (a pair of users) has its own sequence, seq 1, 2, 3...,
// and every user has an inbox sequence over all of their conversations. Keys
// are big-endian uint64 so that cursor order is sequence order. Numbers are
// handed out without holes; only Prune makes holes.
//
// Appends go through a single writer goroutine ([Writer]) that commits everything queued
// in one transaction and starts the next commit as soon as the previous
// one is done (group commit): a lone writer waits for one fsync, many writers
// share them. An append that fails its commit is retried alone and the rest
// without it, so that it fails only itself. A retry carrying the same
// (sender, client id) returns the first append's result and writes nothing.
//
// The store counts the bytes each user has sent and it still holds, in the
// same transaction as the append; [Options.MaxUserBytes] bounds them.
//
// # Caveats
//
// All methods are safe for concurrent use. Append blocks until the message is
// durable, the context ends or the store closes. Prune may run alongside
// appends: it holds the write lock for at most 1000 deletions at a time. The
// file is locked against a second process; Open gives up after
// Options.LockTimeout, and migrates a file of the previous format once.
package storage
