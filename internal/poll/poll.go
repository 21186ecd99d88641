// Package poll waits in tests for a condition that no event announces, such
// as a counter of the server reaching a value: it checks the condition every
// interval until it holds or a deadline passes. This is polling a condition
// with a deadline, not synchronising on time: a test that can wait on a
// channel should.
//
// Modelled on nats-server's checkFor. Safe for concurrent use.
package poll

import (
	"testing"
	"time"
)

// Default bounds of For and Until as the tests of this module use them.
const (
	Total    = 10 * time.Second     // how long a condition may take
	Interval = 5 * time.Millisecond // how often it is checked
)

// Wait calls check every interval until it returns nil, and returns nil; or,
// once total has passed, returns check's last error. It blocks the caller.
// check runs at least once, on the calling goroutine.
func Wait(total, interval time.Duration, check func() error) error {
	deadline := time.Now().Add(total)
	for {
		err := check()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(interval) // polling a condition, not synchronising on time
	}
}

// For is Wait that fails the test with check's last error when total has
// passed. Call it from the test's goroutine.
func For(t testing.TB, total, interval time.Duration, check func() error) {
	t.Helper()
	if err := Wait(total, interval, check); err != nil {
		t.Fatalf("still after %v: %v", total, err)
	}
}
