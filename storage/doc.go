// Package storage is imbridge's durable message history, kept in one bbolt
// file.
//
// # Basics
//
// [Open] opens (or creates) the file; [Store.Append] writes one stored message
// and returns once it is fsynced; [Store.History] pages through a conversation
// and [Store.Sync] through everything stored for one user; [Store.Close]
// finishes the writes under way and closes the file.
//
// Every conversation (a pair of users) has its own sequence, seq 1, 2, 3...,
// and every user has an inbox sequence over all of their conversations. Keys
// are big-endian uint64 so that cursor order is sequence order.
//
// Appends go through a single writer goroutine that commits everything queued
// in one bbolt transaction and starts the next commit as soon as the previous
// one is done (group commit): a lone writer waits for one fsync, many writers
// share them. A retry carrying the same (sender, client id) returns the first
// append's result and writes nothing.
//
// # Caveats
//
// All methods are safe for concurrent use. Append blocks until the message is
// durable, the context ends or the store closes. The file is locked against a
// second process; Open gives up after Options.LockTimeout.
package storage
