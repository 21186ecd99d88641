package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"

	"github.com/imbridge/imbridge/bridge"
	"github.com/imbridge/imbridge/cluster"
)

// Server is one imbridge node.
type Server struct {
	cfg    Config
	log    *slog.Logger
	mqtt   *mqtt.Server
	bridge *bridge.Bridge

	httpSrv *http.Server
	httpLn  net.Listener

	mqttAddr, wsAddr, mqttsAddr, wssAddr string // bound addresses, set by Start

	gate     *gate // admits the sockets of every listener
	metrics  *metrics
	conns    *connSet // the device connections, set by Start
	panics   atomic.Int64
	cluster  *cluster.Router // nil on a single node; closed by the bridge
	stopOnce sync.Once
	stopErr  error
}

// New checks cfg and returns a Server that is not started. It does no I/O.
func New(cfg Config) (*Server, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return &Server{cfg: cfg, log: slog.New(newLogHandler(cfg.Logger.Handler())), gate: newGate(cfg)}, nil
}

// MochiCapabilities returns the mochi settings imbridge runs with for this
// config (defaults filled in); docs/protocol.md explains each choice. The
// load tool gives them to its bare-mochi baseline too.
func (c Config) MochiCapabilities() *mqtt.Capabilities {
	c = c.withDefaults()
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumMessageExpiryInterval = 0 // no expiry stamped on deliveries; history is the long-term store
	caps.MaximumClientWritesPending = int32(c.MaxPendingWrites)
	caps.MaximumInflight = uint16(c.MaxInflight)
	caps.MaximumSessionExpiryInterval = uint32(c.SessionExpiry / time.Second)
	caps.MaximumPacketSize = uint32(4 * c.MaxPayload)
	caps.TopicAliasMaximum = 0 // mochi checks publish ACLs before resolving aliases
	caps.RetainAvailable = 0   // nothing is ever retained
	caps.Compatibilities.NoInheritedPropertiesOnAck = true
	return caps
}

// Start opens the history, binds the listeners and starts serving. It does
// not block. On error, everything it opened is closed again.
func (s *Server) Start() (err error) {
	if err := os.MkdirAll(s.cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("server: data dir: %w", err)
	}
	s.mqtt = mqtt.New(&mqtt.Options{
		Capabilities: s.cfg.MochiCapabilities(),
		InlineClient: true,
		Logger:       s.log.With("component", "mochi"),
		// $SYS topics are refused by the ACL anyway; publish them rarely.
		SysTopicResendInterval: 3600,
	})
	s.metrics = newMetrics()
	s.conns = newConnSet(s.cfg.MaxPendingBytes, s.cfg.WriteTimeout, s.log)
	var router bridge.Router // Alone
	if len(s.cfg.NATS) > 0 {
		if s.cluster, err = cluster.Connect(cluster.Options{URLs: s.cfg.NATS, Node: s.cfg.Node, Logger: s.log}); err != nil {
			return err
		}
		router = s.cluster
	}
	s.bridge, err = bridge.Open(s.mqtt, bridge.Config{
		Router:        router,
		Observer:      s.metrics.observer(),
		DBPath:        filepath.Join(s.cfg.DataDir, "history.db"),
		OpenStore:     s.cfg.OpenStore,
		Secret:        s.cfg.Secret,
		Tokens:        s.cfg.Tokens,
		MaxPayload:    s.cfg.MaxPayload,
		Limits:        s.cfg.Limits,
		Retention:     s.cfg.Retention,
		PruneInterval: s.cfg.PruneInterval,
		Logger:        s.log,
	})
	if err != nil {
		if s.cluster != nil {
			s.cluster.Close()
		}
		return err
	}
	s.metrics.reg.MustRegister(nodeCollector{s})
	defer func() {
		if err != nil {
			s.closeAll()
		}
	}()
	for _, l := range []struct {
		addr  string
		bound *string
		make  func() listeners.Listener
	}{
		{s.cfg.MQTTAddr, &s.mqttAddr, func() listeners.Listener { return newTCPListener("tcp", s.cfg.MQTTAddr, nil, s.gate, s.log) }},
		{s.cfg.WSAddr, &s.wsAddr, func() listeners.Listener {
			return newWSListener("ws", s.cfg.WSAddr, nil, s.gate, s.cfg.WSOrigins, s.log)
		}},
		{s.cfg.MQTTTLSAddr, &s.mqttsAddr, func() listeners.Listener {
			return newTCPListener("tls", s.cfg.MQTTTLSAddr, s.cfg.TLS, s.gate, s.log)
		}},
		{s.cfg.WSSAddr, &s.wssAddr, func() listeners.Listener {
			return newWSListener("wss", s.cfg.WSSAddr, s.cfg.TLS, s.gate, s.cfg.WSOrigins, s.log)
		}},
	} {
		if l.addr == "" {
			continue
		}
		if *l.bound, err = s.addListener(l.make()); err != nil {
			return err
		}
	}
	if s.cfg.HTTPAddr != "" {
		if err = listen(&s.httpLn, "http", s.cfg.HTTPAddr, nil, s.gate, false, s.log); err != nil {
			return fmt.Errorf("server: http listener: %w", err)
		}
		h := s.cfg.HTTP
		s.httpSrv = &http.Server{Handler: s.Handler(),
			ReadHeaderTimeout: h.ReadHeaderTimeout, ReadTimeout: h.ReadTimeout, WriteTimeout: h.WriteTimeout,
			IdleTimeout: h.IdleTimeout, MaxHeaderBytes: h.MaxHeaderBytes}
		go func() { _ = s.httpSrv.Serve(s.httpLn) }()
		s.log.Info("listening", "kind", "http", "addr", s.HTTPAddr())
	}
	if err = s.mqtt.Serve(); err != nil {
		return fmt.Errorf("server: %w", err)
	}
	return nil
}

func (s *Server) addListener(l listeners.Listener) (string, error) {
	g := &guarded{Listener: l, srv: s.mqtt, gate: s.gate, log: s.log, panics: &s.panics, conns: s.conns,
		onDrop: func(cl *mqtt.Client, err error) { s.bridge.OnDisconnect(cl, err, true) }}
	if err := s.mqtt.AddListener(g); err != nil {
		return "", fmt.Errorf("server: %s listener: %w", l.ID(), err)
	}
	s.log.Info("listening", "kind", l.Protocol(), "addr", l.Address())
	return l.Address(), nil
}

// MQTTAddr returns the bound address of the MQTT/TCP listener, "" if none.
func (s *Server) MQTTAddr() string { return s.mqttAddr }

// WSAddr returns the bound address of the MQTT/WebSocket listener, "" if none.
func (s *Server) WSAddr() string { return s.wsAddr }

// MQTTTLSAddr returns the bound address of the MQTT/TLS listener, "" if none.
func (s *Server) MQTTTLSAddr() string { return s.mqttsAddr }

// WSSAddr returns the bound address of the MQTT/WebSocket/TLS listener, "" if
// none.
func (s *Server) WSSAddr() string { return s.wssAddr }

// HTTPAddr returns the bound address of the HTTP listener, "" if none.
func (s *Server) HTTPAddr() string {
	if s.httpLn == nil {
		return ""
	}
	return s.httpLn.Addr().String()
}

// Bridge returns the node's bridge, for embedding programs and tests.
func (s *Server) Bridge() *bridge.Bridge { return s.bridge }

// Health is the body of GET /healthz.
type Health struct {
	Status    string        `json:"status"`                      // "ok", or "degraded" while a listener fails to accept or the cluster is out of reach
	Node      string        `json:"node"`                        // this node's name (Config.Node)
	Cluster   *Cluster      `json:"cluster,omitempty"`           // in a cluster only
	Degraded  []string      `json:"degradedListeners,omitempty"` // listeners that failed to accept in the last 5 s and accepted nothing since
	Accept    int64         `json:"acceptErrors"`                // Accept errors of all listeners (EMFILE, ...), each retried
	Epoch     string        `json:"epoch"`
	Clients   int64         `json:"clients"`           // connected devices
	Subs      int64         `json:"subscriptions"`     // subscriptions of all sessions
	Bridge    bridge.Stats  `json:"bridge"`            // message counters
	Commits   uint64        `json:"commits"`           // history commits
	Appended  uint64        `json:"appended"`          // appends in them
	Inflight  int64         `json:"inflight"`          // QoS 1 deliveries awaiting the device's PUBACK
	Dropped   int64         `json:"inflightDropped"`   // QoS 1 deliveries dropped: session inflight full
	QueueFull int64         `json:"writeQueueDropped"` // deliveries dropped: device write queue full
	Panics    int64         `json:"panics"`            // connections closed by the panic guard
	PreLogin  int64         `json:"preLogin"`          // MQTT sockets that have not sent a complete CONNECT yet
	Closed    SocketsClosed `json:"socketsClosed"`     // sockets closed by the listeners' limits
	Slow      int64         `json:"slowConsumers"`     // connections closed: device did not read (MaxPendingBytes, WriteTimeout)
}

// Cluster is the state of a node's link to the other nodes.
type Cluster struct {
	Connected bool     `json:"connected"` // the NATS connection is up
	Peers     []string `json:"peers"`     // the other nodes heard of in the last 3 s
}

// SocketsClosed counts the sockets the listeners closed before login, by
// reason.
type SocketsClosed struct {
	IPLimit         int64 `json:"ipLimit"`         // over Config.MaxConnsPerIP
	PreLoginLimit   int64 `json:"preLoginLimit"`   // over Config.MaxPreLogin
	ConnectTimeout  int64 `json:"connectTimeout"`  // no complete CONNECT within Config.ConnectTimeout
	ConnectTooLarge int64 `json:"connectTooLarge"` // CONNECT over Config.MaxConnectSize
}

// Health returns the node's counters.
func (s *Server) Health() Health {
	st := s.bridge.StoreStats()
	h := Health{
		Status: "ok", Node: s.cfg.Node, Epoch: s.bridge.Epoch(),
		Clients: atomic.LoadInt64(&s.mqtt.Info.ClientsConnected),
		Subs:    atomic.LoadInt64(&s.mqtt.Info.Subscriptions),
		Bridge:  s.bridge.Stats(),
		Commits: st.Commits, Appended: st.Appended,
		Inflight:  atomic.LoadInt64(&s.mqtt.Info.Inflight),
		Dropped:   atomic.LoadInt64(&s.mqtt.Info.InflightDropped),
		QueueFull: atomic.LoadInt64(&s.mqtt.Info.MessagesDropped),
		Panics:    s.panics.Load(),
		PreLogin:  s.gate.preLoginCount(),
		Closed: SocketsClosed{
			IPLimit:         s.gate.refused[closedIPLimit].Load(),
			PreLoginLimit:   s.gate.refused[closedPreLoginLimit].Load(),
			ConnectTimeout:  s.gate.refused[closedConnectTimeout].Load(),
			ConnectTooLarge: s.gate.refused[closedConnectTooLarge].Load(),
		},
		Slow: s.conns.slowConsumers(),
	}
	now := time.Now()
	for _, l := range s.gate.listeners() {
		h.Accept += l.errors.Load()
		if l.degraded(now) {
			h.Degraded = append(h.Degraded, l.id)
		}
	}
	if len(h.Degraded) > 0 {
		h.Status = "degraded"
		slices.Sort(h.Degraded)
	}
	if s.cluster != nil {
		h.Cluster = &Cluster{Connected: s.cluster.Connected(), Peers: s.cluster.Peers()}
		if !h.Cluster.Connected {
			h.Status = "degraded"
		}
	}
	return h
}

// Handler returns the node's HTTP API: /healthz, /metrics (Prometheus), the
// bridge's /v1/ API, and the demo at /demo/ when Config.DemoDir is set.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(s.Health())
	})
	mux.Handle("/v1/", s.bridge.Handler())
	mux.Handle("GET /metrics", s.metricsHandler())
	if s.cfg.DemoDir != "" {
		mux.Handle("/demo/", http.StripPrefix("/demo/", demoHandler(s.cfg.DemoDir)))
	}
	return mux
}

// Shutdown stops the listeners and disconnects every device, waits for the
// sends in flight to be stored, then closes the history. If ctx ends first,
// remaining connections are cut and the history is still closed cleanly;
// Shutdown then returns ctx's error. Later calls return the first result.
func (s *Server) Shutdown(ctx context.Context) error {
	s.stopOnce.Do(func() { s.stopErr = s.shutdown(ctx) })
	return s.stopErr
}

func (s *Server) shutdown(ctx context.Context) error {
	var errs []error
	if s.httpSrv != nil {
		if err := s.httpSrv.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("server: http: %w", err))
		}
	}
	s.gate.close() // sockets without a CONNECT never reach mochi
	// A device that stopped reading would block the DISCONNECT write, and
	// with it mochi's Close: bound every write from here on.
	deadline := time.Now().Add(s.cfg.ShutdownGrace)
	for _, cl := range s.mqtt.Clients.GetAll() {
		if cl.Net.Conn != nil {
			_ = cl.Net.Conn.SetWriteDeadline(deadline)
		}
	}
	closed := make(chan struct{})
	go func() {
		_ = s.mqtt.Close()
		s.mqtt.Listeners.ClientsWg.Wait() // every client goroutine, and so every send, has finished
		s.conns.wait()                    // every socket is closed, after its final flush (bounded by the grace)
		close(closed)
	}()
	select {
	case <-closed:
	case <-ctx.Done():
		errs = append(errs, fmt.Errorf("server: shutdown: %w", ctx.Err()))
		for _, cl := range s.mqtt.Clients.GetAll() {
			cl.Stop(ctx.Err())
		}
		select {
		case <-closed:
		case <-time.After(s.cfg.ShutdownGrace):
			s.log.Error("mochi did not stop; closing the history anyway")
		}
	}
	if err := s.bridge.Close(); err != nil {
		errs = append(errs, err)
	}
	s.log.Info("stopped")
	return errors.Join(errs...)
}

// closeAll undoes a failed Start.
func (s *Server) closeAll() {
	if s.httpSrv != nil {
		s.httpSrv.Close()
	} else if s.httpLn != nil {
		s.httpLn.Close()
	}
	s.gate.close()
	_ = s.mqtt.Close()
	_ = s.bridge.Close()
}
