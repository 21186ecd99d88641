package storage

import "errors"

// Errors at Open.
var (
	// ErrLocked means another process holds the database file.
	ErrLocked = errors.New("storage: database file is locked by another process")
	// ErrForeign means the file is a bbolt database of some other program,
	// or of a newer imbridge.
	ErrForeign = errors.New("storage: file is not an imbridge history")
)

// Errors of a running store.
var (
	// ErrClosed is returned by calls made after Close.
	ErrClosed = errors.New("storage: closed")
	// ErrUnavailable is wrapped by the errors of a backend that cannot be
	// reached (PostgreSQL down, restarting or failing over). Nothing was
	// stored by the call that returned it, or its commit is unknown (then
	// a retry with the same client id is stored once); retry later.
	ErrUnavailable = errors.New("storage: backend unavailable")
)

// Errors of one append.
var (
	// ErrQuotaExceeded is returned by Append for a message that would take
	// its sender over Options.MaxUserBytes. Nothing was stored; the other
	// appends of the same commit are not affected.
	ErrQuotaExceeded = errors.New("storage: quota exceeded")
)
