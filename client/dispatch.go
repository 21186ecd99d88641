package client

import "sync"

// dispatcher runs callbacks one at a time, in the order given, on its own
// goroutine, with an unbounded queue: the network goroutine never waits for
// the app.
type dispatcher struct {
	mu      sync.Mutex // guards queue and stopped
	queue   []func()
	stopped bool
	wake    chan struct{} // a token per batch of work
	done    chan struct{} // closed when the goroutine has exited
}

func newDispatcher() *dispatcher {
	d := &dispatcher{wake: make(chan struct{}, 1), done: make(chan struct{})}
	go d.loop()
	return d
}

// do queues f. After stop, it does nothing.
func (d *dispatcher) do(f func()) {
	d.mu.Lock()
	if !d.stopped {
		d.queue = append(d.queue, f)
	}
	d.mu.Unlock()
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

func (d *dispatcher) loop() {
	defer close(d.done)
	for range d.wake {
		for {
			d.mu.Lock()
			batch := d.queue
			d.queue = nil
			stopped := d.stopped
			d.mu.Unlock()
			for _, f := range batch {
				f()
			}
			if len(batch) == 0 {
				if stopped {
					return
				}
				break
			}
		}
	}
}

// stop runs what is queued, then ends the goroutine; it blocks until then.
// It must not be called from a callback.
func (d *dispatcher) stop() {
	d.mu.Lock()
	if d.stopped {
		d.mu.Unlock()
		<-d.done
		return
	}
	d.stopped = true
	d.mu.Unlock()
	select {
	case d.wake <- struct{}{}:
	default: // a token is pending already; or the loop saw stopped and ended
	}
	<-d.done
}
