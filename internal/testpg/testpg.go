// Package testpg runs a real PostgreSQL 15 server on loopback for tests, as
// net/http/httptest does for HTTP handlers: initdb into a new directory, a
// free 127.0.0.1 port, stopped and removed at the test's cleanup.
//
// PostgreSQL refuses to run as root; when the test runs as root (as in CI),
// the server runs as the system user "postgres". Tests skip without the
// binaries outside CI and fail under CI=true (internal/needs).
//
// A Server's methods are safe for concurrent use, except that Stop, Start
// and Kill must not race with each other.
package testpg

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/imbridge/imbridge/internal/needs"
	"github.com/imbridge/imbridge/internal/poll"
)

const hint = "apt-get install postgresql-15; its binaries are in /usr/lib/postgresql/15/bin"

// ready bounds how long a server may take to start or stop.
const ready = 60 * time.Second

// Server is one PostgreSQL server.
type Server struct {
	// Port is the loopback TCP port; it stays the same across Stop and Start.
	Port int
	dir  string // owned by the server's user: data/, the socket, the log
	bin  string // directory of initdb, postgres, pg_basebackup
	cred *syscall.Credential
	args []string // extra postgres arguments (-c name=value)

	cmd  *exec.Cmd     // the running postmaster; nil when stopped
	exit chan struct{} // closed when cmd has exited
	dbs  atomic.Int64  // databases made by NewDB
}

// Start initialises and starts a server, stopped at t's cleanup. conf are
// extra settings, "name=value", passed as -c.
func Start(t testing.TB, conf ...string) *Server {
	t.Helper()
	s := prepare(t)
	if err := s.run("initdb", "-D", s.data(), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync", "--no-instructions"); err != nil {
		t.Fatal(err)
	}
	s.args = conf
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	return s
}

// prepare finds the binaries, makes the directory and picks a port.
func prepare(t testing.TB) *Server {
	t.Helper()
	initdb := binary(t, "initdb")
	s := &Server{bin: filepath.Dir(initdb)}
	dir, err := os.MkdirTemp("", "testpg-")
	if err != nil {
		t.Fatal(err)
	}
	s.dir = dir
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Errorf("testpg: stop: %v", err)
		}
		if t.Failed() {
			log, _ := os.ReadFile(filepath.Join(dir, "log"))
			t.Logf("testpg: log of the server on port %d:\n%s", s.Port, log)
		}
		os.RemoveAll(dir)
	})
	if os.Getuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatalf("testpg: running as root needs the user postgres to run the server: %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		s.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	if s.Port, err = freePort(); err != nil {
		t.Fatal(err)
	}
	return s
}

// binary returns the path of a PostgreSQL 15 program: on PATH, or in
// Debian's directory.
func binary(t testing.TB, name string) string {
	t.Helper()
	p := filepath.Join("/usr/lib/postgresql/15/bin", name)
	if _, err := os.Stat(p); err == nil {
		return p
	}
	return needs.Tool(t, hint, name)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (s *Server) data() string { return filepath.Join(s.dir, "data") }

// command returns a command of the server's binaries, run as the server's user.
func (s *Server) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(s.bin, name), args...)
	cmd.Dir = s.dir
	cmd.Env = append(os.Environ(), "LC_ALL=C.UTF-8", "TZ=UTC")
	if s.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred}
	}
	return cmd
}

// run runs a PostgreSQL program to its end.
func (s *Server) run(name string, args ...string) error {
	out, err := s.command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("testpg: %s: %v\n%s", name, err, out)
	}
	return nil
}

// Start starts the server (again, after Stop or Kill) on the same port and
// data, and returns once it accepts connections.
func (s *Server) Start() error {
	if s.cmd != nil {
		return errors.New("testpg: already running")
	}
	args := []string{"-D", s.data(), "-p", strconv.Itoa(s.Port), "-k", s.dir, "-c", "listen_addresses=127.0.0.1"}
	for _, c := range s.args {
		args = append(args, "-c", c)
	}
	cmd := s.command("postgres", args...)
	logf, err := os.OpenFile(filepath.Join(s.dir, "log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("testpg: start postgres: %w", err)
	}
	exit := make(chan struct{})
	go func() {
		cmd.Wait()
		logf.Close()
		close(exit)
	}()
	s.cmd, s.exit = cmd, exit
	var died bool
	err = poll.Wait(ready, 20*time.Millisecond, func() error {
		select {
		case <-exit:
			died = true
			return nil
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, s.DSN("postgres"))
		if err != nil {
			return err
		}
		return conn.Close(ctx)
	})
	if died {
		log, _ := os.ReadFile(filepath.Join(s.dir, "log"))
		s.cmd = nil
		return fmt.Errorf("testpg: postgres exited at start:\n%s", log)
	}
	if err != nil {
		return fmt.Errorf("testpg: postgres not ready after %v: %w", ready, err)
	}
	return nil
}

// Stop shuts the server down (fast shutdown: sessions are ended, committed
// work is kept) and waits for it to exit. It does nothing if the server is
// not running.
func (s *Server) Stop() error {
	return s.signal(syscall.SIGINT)
}

// Kill kills the server's postmaster with SIGKILL, as a crash would, and
// waits for it to exit; its backends end on their own.
func (s *Server) Kill() error {
	return s.signal(syscall.SIGKILL)
}

func (s *Server) signal(sig syscall.Signal) error {
	if s.cmd == nil {
		return nil
	}
	if err := s.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	select {
	case <-s.exit:
	case <-time.After(ready):
		s.cmd.Process.Kill()
		<-s.exit
		return fmt.Errorf("testpg: postgres did not stop in %v", ready)
	}
	s.cmd = nil
	return nil
}

// DSN returns the URL of database db on the server, user postgres.
func (s *Server) DSN(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable&connect_timeout=5", s.Port, db)
}

// Exec runs SQL statements on database db.
func (s *Server) Exec(db, sql string) error {
	return s.with(db, func(ctx context.Context, conn *pgx.Conn) error {
		_, err := conn.Exec(ctx, sql)
		return err
	})
}

// with calls f with a connection to database db and a deadline.
func (s *Server) with(db string, f func(context.Context, *pgx.Conn) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), 70*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.DSN(db))
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	return f(ctx, conn)
}

// NewDB creates a new, empty database and returns its DSN.
func (s *Server) NewDB(t testing.TB) string {
	t.Helper()
	name := fmt.Sprintf("t%d", s.dbs.Add(1))
	if err := s.Exec("postgres", "CREATE DATABASE "+name); err != nil {
		t.Fatalf("testpg: create database: %v", err)
	}
	return s.DSN(name)
}

// Pair is a primary with one synchronous standby that streams from it.
type Pair struct {
	Primary, Standby *Server
}

// StartPair starts a primary whose commits wait for the standby
// (synchronous_standby_names='*', synchronous_commit=on) and the standby,
// made by pg_basebackup -R, with database db created on both. Both are
// stopped at t's cleanup.
func StartPair(t testing.TB, db string) *Pair {
	t.Helper()
	p := &Pair{Primary: Start(t, "synchronous_commit=on", "wal_level=replica")}
	if err := p.Primary.Exec("postgres", "CREATE DATABASE "+db); err != nil {
		t.Fatal(err)
	}
	st := prepare(t)
	binary(t, "pg_basebackup")
	if err := st.run("pg_basebackup", "-h", "127.0.0.1", "-p", strconv.Itoa(p.Primary.Port), "-U", "postgres",
		"-D", st.data(), "-R", "-X", "stream", "-c", "fast", "--no-sync"); err != nil {
		t.Fatal(err)
	}
	st.args = []string{"hot_standby=on", "cluster_name=standby"}
	if err := st.Start(); err != nil {
		t.Fatal(err)
	}
	p.Standby = st
	// Commits wait for the standby from now on (before, the CREATE DATABASE
	// would have waited for a standby that did not exist).
	for _, sql := range []string{"ALTER SYSTEM SET synchronous_standby_names = '*'", "SELECT pg_reload_conf()"} {
		if err := p.Primary.Exec("postgres", sql); err != nil {
			t.Fatal(err)
		}
	}
	// The pair is ready when the primary sees its standby as synchronous.
	poll.For(t, ready, 20*time.Millisecond, func() error {
		var state string
		if err := p.Primary.query("postgres", "SELECT sync_state FROM pg_stat_replication", &state); err != nil {
			return err
		}
		if state != "sync" {
			return fmt.Errorf("standby state %q", state)
		}
		return nil
	})
	return p
}

// Failover kills the primary with SIGKILL and promotes the standby, and
// returns once the standby accepts writes.
func (p *Pair) Failover() error {
	if err := p.Primary.Kill(); err != nil {
		return err
	}
	var ok bool
	return p.Standby.query("postgres", "SELECT pg_promote(true, 60)", &ok)
}

// DSN returns a URL naming both servers, primary first, that connects to the
// one that accepts writes (target_session_attrs=read-write).
func (p *Pair) DSN(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d,127.0.0.1:%d/%s?sslmode=disable&connect_timeout=5&target_session_attrs=read-write",
		p.Primary.Port, p.Standby.Port, db)
}

// query runs one query on database db and scans its one row into dest.
func (s *Server) query(db, sql string, dest ...any) error {
	return s.with(db, func(ctx context.Context, conn *pgx.Conn) error {
		return conn.QueryRow(ctx, sql).Scan(dest...)
	})
}

// UnreachableDSN returns the DSN of a database on a loopback port where
// nothing listens, and that port as "127.0.0.1:port".
func UnreachableDSN(t testing.TB) (dsn, addr string) {
	t.Helper()
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	addr = fmt.Sprintf("127.0.0.1:%d", port)
	return "postgres://imbridge@" + addr + "/imbridge?sslmode=disable", addr
}
