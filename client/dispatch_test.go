package client

import (
	"testing"
	"time"
)

// TestDispatcherStopDoesNotHang: the loop takes work queued while a
// callback ran (leaving that do's wake token unread), sees stopped and
// ends; stop must still return. It hung Close before.
func TestDispatcherStopDoesNotHang(t *testing.T) {
	d := newDispatcher()
	started, release := make(chan struct{}), make(chan struct{})
	d.do(func() { close(started); <-release })
	<-started
	d.do(func() { // runs in the loop's second round, until stop has begun
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			d.mu.Lock()
			stopped := d.stopped
			d.mu.Unlock()
			if stopped {
				return
			}
			time.Sleep(time.Millisecond) // polling a condition
		}
	})
	close(release)
	stopped := make(chan struct{})
	go func() { d.stop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("stop hung")
	}
}
