package storage

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/imbridge/imbridge/protocol"
)

// Request is one append queued for a [Writer]. A backend's commit function
// reads Msg and Enc and sets Res, or Err for a refusal of this append alone.
type Request struct {
	// Msg is the message to store, with Seq and InboxSeq zero.
	Msg protocol.Message
	// Enc is Msg encoded without seq and inboxSeq (protocol.AppendMessage),
	// made on the caller's goroutine, not the writer's.
	Enc []byte
	// Res is the result, set by the commit function.
	Res Appended
	// Err is a refusal of this append alone (ErrQuotaExceeded), set by the
	// commit function, which then writes nothing for it and does not fail.
	Err error

	done chan struct{}
}

// CommitFunc writes reqs in one transaction. It resets and sets each
// request's Res and Err, as it is called again on the same requests after a
// failure. On error nothing was written, and bad is the index of the request
// that made the transaction fail, or -1 when the commit itself failed.
type CommitFunc func(reqs []*Request) (bad int, err error)

// Writer is the group commit shared by the backends: a queue of appends and
// one goroutine that commits everything queued, up to Options.MaxBatch, in
// one transaction, and starts the next commit once the previous is done. An
// append that makes its commit fail is retried alone and the rest without
// it, so that it fails only itself. Its methods are safe for concurrent use.
type Writer struct {
	commitTx CommitFunc
	opts     Options

	mu     sync.RWMutex // guards closed; held for reading while queueing to reqs
	closed bool

	reqs chan *Request
	done chan struct{} // closed when the writer goroutine has drained reqs and exited

	commits  uint64 // successful transactions; owned by the writer goroutine
	appended uint64 // appends in them; owned by the writer goroutine
	statsMu  sync.Mutex
	lastStat Stats // guarded by statsMu
}

// NewWriter starts the writer goroutine of a backend, which commits with
// commitTx. opts must have its defaults filled in (MaxBatch at least 1). Close
// stops it.
func NewWriter(opts Options, commitTx CommitFunc) *Writer {
	w := &Writer{commitTx: commitTx, opts: opts, reqs: make(chan *Request, opts.MaxBatch), done: make(chan struct{})}
	go w.run()
	return w
}

// Append queues m and blocks until its commit is done, ctx ends (the message
// may still be committed) or the writer is closed (ErrClosed). It returns the
// result, or the append's own error, or that of a commit that failed even
// with m alone in it.
func (w *Writer) Append(ctx context.Context, m protocol.Message) (Appended, error) {
	m.Seq, m.InboxSeq = 0, 0
	enc := protocol.AppendMessage(make([]byte, 0, 192+len(m.Data)), &m) // here, not in the single writer goroutine
	req := &Request{Msg: m, Enc: enc, done: make(chan struct{})}
	w.mu.RLock()
	if w.closed {
		w.mu.RUnlock()
		return Appended{}, ErrClosed
	}
	select {
	case w.reqs <- req:
	case <-ctx.Done():
		w.mu.RUnlock()
		return Appended{}, ctx.Err()
	}
	w.mu.RUnlock()
	select {
	case <-req.done:
		return req.Res, req.Err
	case <-ctx.Done():
		return Appended{}, ctx.Err()
	}
}

// Stats returns the counters as of the last commit, and the appends queued now.
func (w *Writer) Stats() Stats {
	w.statsMu.Lock()
	st := w.lastStat
	w.statsMu.Unlock()
	st.Queued = len(w.reqs)
	return st
}

// Close stops accepting appends and blocks until those queued are committed
// and the last OnCommit has returned. Calls after the first return at once.
func (w *Writer) Close() {
	w.mu.Lock()
	if !w.closed {
		w.closed = true
		close(w.reqs)
	}
	w.mu.Unlock()
	<-w.done
}

// run commits queued appends until reqs is closed and drained.
func (w *Writer) run() {
	defer close(w.done)
	batch := make([]*Request, 0, w.opts.MaxBatch)
	for first := range w.reqs {
		batch = append(batch[:0], first)
	fill:
		for len(batch) < w.opts.MaxBatch {
			select {
			case r, ok := <-w.reqs:
				if !ok {
					break fill
				}
				batch = append(batch, r)
			default:
				break fill
			}
		}
		w.commit(batch)
	}
}

// commit writes batch in one transaction if it can. When one append makes
// the transaction fail, as bbolt's Batch does it takes that append out,
// commits it alone (so that it gets its own error), and retries the rest
// together; when the commit itself fails, it retries each append alone, so
// that a bad request fails only itself, unless the error wraps
// ErrUnavailable: then every append of the batch gets it at once. It then releases every sender and
// only then calls OnCommit.
func (w *Writer) commit(batch []*Request) {
	committed := batch // in commit order; batch itself unless a retry split it
	if bad, err := w.tx(batch); err != nil {
		committed = make([]*Request, 0, len(batch))
		rest := append([]*Request(nil), batch...)
		for len(rest) > 0 && err != nil {
			if len(rest) == 1 {
				rest[0].Err = err
				rest = nil
				break
			}
			if bad < 0 && errors.Is(err, ErrUnavailable) { // the backend is away: no append would do better alone
				for _, r := range rest {
					r.Err = err
				}
				rest = nil
				break
			}
			if bad < 0 { // not the fault of one append: each on its own
				for _, r := range rest {
					if _, err := w.tx([]*Request{r}); err != nil {
						r.Err = err
					} else {
						committed = append(committed, r)
					}
				}
				rest = nil
				break
			}
			r := rest[bad]
			rest = append(rest[:bad], rest[bad+1:]...)
			if _, err := w.tx([]*Request{r}); err != nil {
				r.Err = err
			} else {
				committed = append(committed, r)
			}
			bad, err = w.tx(rest)
		}
		committed = append(committed, rest...)
	}
	for _, r := range batch {
		if r.Err != nil {
			r.Res = Appended{}
		}
		close(r.done)
	}
	if w.opts.OnCommit == nil {
		return
	}
	var fresh []Appended
	for _, r := range committed {
		if r.Err == nil && !r.Res.Duplicate {
			if fresh == nil {
				fresh = make([]Appended, 0, len(committed))
			}
			fresh = append(fresh, r.Res)
		}
	}
	if len(fresh) > 0 {
		w.opts.OnCommit(fresh)
	}
}

// tx runs one transaction through commitTx and, when it succeeds, counts it
// and reports it to Options.Observe.
func (w *Writer) tx(reqs []*Request) (bad int, err error) {
	start := time.Now()
	if bad, err = w.commitTx(reqs); err != nil {
		w.opts.Logger.Error("history commit failed", "error", err, "appends", len(reqs))
		return bad, err
	}
	n := 0
	for _, r := range reqs {
		if r.Err == nil {
			n++
		}
	}
	if w.opts.Observe != nil {
		w.opts.Observe(time.Since(start), n)
	}
	w.commits++
	w.appended += uint64(n)
	w.statsMu.Lock()
	w.lastStat = Stats{Commits: w.commits, Appended: w.appended}
	w.statsMu.Unlock()
	return -1, nil
}
