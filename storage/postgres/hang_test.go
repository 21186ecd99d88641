package postgres

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/imbridge/imbridge/internal/testpg"
	"github.com/imbridge/imbridge/storage"
	"github.com/imbridge/imbridge/storage/storagetest"
)

// freezer is a TCP proxy to a server that can stop answering: once frozen,
// it forwards nothing more in either direction and accepts connections
// without forwarding them, like a server that hangs or a network that drops
// everything.
type freezer struct {
	ln     net.Listener
	to     string
	mu     sync.Mutex // guards frozen and conns
	frozen bool
	conns  []net.Conn
}

func newFreezer(t *testing.T, to string) *freezer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &freezer{ln: ln, to: to}
	t.Cleanup(func() {
		ln.Close()
		f.mu.Lock()
		defer f.mu.Unlock()
		for _, c := range f.conns {
			c.Close()
		}
	})
	go f.accept()
	return f
}

func (f *freezer) accept() {
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		f.mu.Lock()
		f.conns = append(f.conns, c)
		frozen := f.frozen
		f.mu.Unlock()
		if frozen {
			continue // held open, never answered
		}
		s, err := net.Dial("tcp", f.to)
		if err != nil {
			c.Close()
			continue
		}
		f.mu.Lock()
		f.conns = append(f.conns, s)
		f.mu.Unlock()
		go f.pipe(s, c)
		go f.pipe(c, s)
	}
}

// pipe copies from src to dst until src ends or the proxy is frozen.
func (f *freezer) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		f.mu.Lock()
		frozen := f.frozen
		f.mu.Unlock()
		if frozen {
			io.Copy(io.Discard, src) // swallow everything from now on
			return
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			dst.Close()
			return
		}
	}
}

func (f *freezer) freeze() {
	f.mu.Lock()
	f.frozen = true
	f.mu.Unlock()
}

// TestHungServer: when PostgreSQL stops answering (its connections stay
// open, nothing comes back), Append, History and Open fail with
// ErrUnavailable instead of hanging.
func TestHungServer(t *testing.T) {
	srv := testpg.Start(t)
	dsn := srv.NewDB(t)
	direct := dsn[strings.Index(dsn, "@")+1 : strings.LastIndex(dsn, "/")]
	f := newFreezer(t, direct)
	via := strings.Replace(dsn, direct, f.ln.Addr().String(), 1)
	s := open(t, via, nil)
	if _, err := s.Append(context.Background(), storagetest.Msg("alice", "bob", "c1", 1)); err != nil {
		t.Fatal(err)
	}
	f.freeze()
	// A deadline far beyond the store's own: reaching it means a hang.
	ctx, cancel := context.WithTimeout(context.Background(), 4*txTimeout)
	defer cancel()
	if _, err := s.Append(ctx, storagetest.Msg("alice", "bob", "c2", 2)); !errors.Is(err, storage.ErrUnavailable) {
		t.Fatalf("append to a hung server: %v, want ErrUnavailable", err)
	}
	if _, err := s.History("alice", "bob", storage.HistoryFilter{Limit: 1}); !errors.Is(err, storage.ErrUnavailable) {
		t.Fatalf("history of a hung server: %v, want ErrUnavailable", err)
	}
	start := time.Now()
	if _, err := Open(ctx, via, nil); !errors.Is(err, storage.ErrUnavailable) {
		t.Fatalf("open of a hung server: %v, want ErrUnavailable", err)
	}
	t.Logf("open gave up after %v", time.Since(start).Round(time.Millisecond))
}
