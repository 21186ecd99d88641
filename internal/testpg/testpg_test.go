package testpg

import (
	"testing"
)

// TestStartStopStart: a server starts, keeps a committed row across a stop
// and a start on the same port, and serves a fresh database.
func TestStartStopStart(t *testing.T) {
	s := Start(t)
	dsn := s.NewDB(t)
	if dsn == "" {
		t.Fatal("no DSN")
	}
	if err := s.Exec("t1", "CREATE TABLE x (v int); INSERT INTO x VALUES (7)"); err != nil {
		t.Fatal(err)
	}
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := s.Exec("t1", "SELECT 1"); err == nil {
		t.Fatal("a stopped server answered")
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	var v int
	if err := s.query("t1", "SELECT v FROM x", &v); err != nil || v != 7 {
		t.Fatalf("after restart: %d %v", v, err)
	}
}

// TestFailover: a row committed on the primary is on the standby after the
// primary is killed and the standby promoted, and the standby takes writes.
func TestFailover(t *testing.T) {
	p := StartPair(t, "app")
	if err := p.Primary.Exec("app", "CREATE TABLE x (v int); INSERT INTO x VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	if err := p.Failover(); err != nil {
		t.Fatal(err)
	}
	if err := p.Standby.Exec("app", "INSERT INTO x VALUES (2)"); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := p.Standby.query("app", "SELECT count(*) FROM x", &n); err != nil || n != 2 {
		t.Fatalf("rows on the promoted standby: %d %v", n, err)
	}
}
