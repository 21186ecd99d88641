// Package testnats runs a real NATS server, embedded in the test process, on
// a loopback port of its own.
package testnats

import (
	"fmt"
	"net"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
)

// Server is a running NATS server; it is shut down at the test's cleanup.
type Server struct {
	t    testing.TB
	port int
	srv  *natsserver.Server
}

// Start starts a NATS server on 127.0.0.1 and a free port.
func Start(t testing.TB) *Server {
	t.Helper()
	s := &Server{t: t, port: -1}
	s.start()
	s.port = s.srv.Addr().(*net.TCPAddr).Port
	t.Cleanup(s.Stop)
	return s
}

func (s *Server) start() {
	s.t.Helper()
	srv, err := natsserver.NewServer(&natsserver.Options{
		Host: "127.0.0.1", Port: s.port, NoLog: true, NoSigs: true,
	})
	if err != nil {
		s.t.Fatal(err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		s.t.Fatal("NATS server not ready within 10s")
	}
	s.srv = srv
}

// URL returns the server's client URL.
func (s *Server) URL() string { return fmt.Sprintf("nats://127.0.0.1:%d", s.port) }

// Stop shuts the server down (idempotent).
func (s *Server) Stop() {
	if s.srv != nil {
		s.srv.Shutdown()
		s.srv.WaitForShutdown()
	}
}

// Restart stops the server and starts a new one on the same port, as a
// restarted nats-server would be: clients reconnect to it by themselves.
func (s *Server) Restart() {
	s.t.Helper()
	s.Stop()
	s.start()
}
