package server

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/url"
	"os"
	"time"

	"github.com/imbridge/imbridge/auth"
	"github.com/imbridge/imbridge/bridge"
	"github.com/imbridge/imbridge/storage"
)

// Config configures a Server. Zero fields take the defaults written beside
// them; an empty address disables that listener.
type Config struct {
	MQTTAddr string // MQTT over TCP, e.g. ":1883"
	WSAddr   string // MQTT over WebSocket, e.g. ":8083"; on the paths "/mqtt" and "/" only
	HTTPAddr string // HTTP API and /healthz, e.g. ":8080"
	// MQTTTLSAddr and WSSAddr serve MQTT over TLS and over WebSocket with
	// TLS, e.g. ":8883" and ":8084", with the certificate in TLS. Off when
	// empty.
	MQTTTLSAddr string
	WSSAddr     string
	TLS         *tls.Config

	// DataDir holds the history file history.db; created (0700) if missing.
	// Required.
	DataDir string
	// OpenStore, when set, opens the history instead of DataDir/history.db
	// (bridge.Config.OpenStore), e.g. PostgreSQL.
	OpenStore func(*storage.Options) (storage.Store, error)
	// NATS are the NATS servers through which this node joins a cluster
	// (package cluster). Empty: a single node.
	NATS []string
	// Node is this node's name in logs, /healthz and /metrics, and in the
	// cluster, where it must be unique. Default: the host name.
	Node string
	// Secret verifies tokens. Required, at least 16 bytes.
	Secret []byte
	// Tokens are the optional checks of tokens (bridge.Config.Tokens): a
	// required audience and a longest lifetime. Zero: none.
	Tokens auth.VerifierOptions

	// MaxPayload is the largest request payload in bytes (bridge.Config).
	// Default 64 KiB. MQTT packets up to 4 times this size are read and a
	// too-large request gets an error receipt; larger packets close the
	// connection, as MQTT prescribes.
	MaxPayload int
	// MaxPendingWrites is the per-device queue of messages waiting to be
	// written to its socket. Default 1024. When it is full, mochi drops
	// further deliveries to that device (counted in /healthz): stored
	// messages are then fetched with a sync, online-only ones are lost.
	MaxPendingWrites int
	// MaxPendingBytes bounds the bytes written to one device connection
	// that its socket has not taken yet. Default 4 MiB (a 1 MiB history page
	// plus a burst), or 4 x MaxPayload if larger; at least 2 MiB and 2 x
	// MaxPayload. A device further behind is disconnected as a slow
	// consumer (counted in /healthz) and syncs when it reconnects. Writes to
	// a device never wait for its socket.
	MaxPendingBytes int
	// WriteTimeout is how long a device's socket may take no byte while
	// data waits for it; then the device is disconnected as a slow
	// consumer. Default 10s.
	WriteTimeout time.Duration
	// MaxInflight is the number of unacknowledged QoS 1 deliveries a session
	// may hold, connected or not. Default 1024; at most 65535. Beyond it,
	// deliveries are dropped and stored messages must be synced.
	MaxInflight int
	// SessionExpiry caps how long a disconnected persistent session is kept
	// (MQTT 3.1.1 clean=false, MQTT 5 session expiry). Default 24h.
	SessionExpiry time.Duration
	// ShutdownGrace bounds the writes of DISCONNECT packets to devices during
	// Shutdown, so that a device that stopped reading cannot hang it.
	// Default 1s.
	ShutdownGrace time.Duration

	// Limits are the per-user and per-IP limits (bridge.Limits).
	Limits bridge.Limits
	// Retention prunes each conversation's history in the background
	// (bridge.Config.Retention), every PruneInterval (default 1 minute).
	// Zero: keep everything.
	Retention     storage.Retention
	PruneInterval time.Duration

	// ConnectTimeout is how long a socket has, from being accepted, to send
	// a complete CONNECT (the TLS handshake and the WebSocket upgrade
	// included); then it is closed. Default 5s.
	ConnectTimeout time.Duration
	// MaxConnectSize caps the CONNECT packet, in bytes after its fixed
	// header: a larger one is closed, without CONNACK, as soon as its fixed
	// header is read, before its body. Default 8 KiB, or the MQTT packet
	// size (4 x MaxPayload) if smaller; at most that packet size.
	MaxConnectSize int
	// MaxConnsPerIP caps the open sockets of one IPv4 address or one IPv6
	// /64, over all listeners (HTTP included), logged in or not; a socket
	// over it is closed at once. Default 256 (carrier NAT puts many devices
	// behind one address); -1: no cap.
	MaxConnsPerIP int
	// MaxPreLogin caps the MQTT sockets, over all MQTT listeners, that have
	// not yet sent a complete CONNECT; a socket over it is closed at once.
	// Default 4096; -1: no cap.
	MaxPreLogin int
	// WSOrigins lists the origins ("https://chat.example.com") whose browser
	// pages may open MQTT over WebSocket; "*" allows every origin. Requests
	// without an Origin header (not browsers) are always allowed. Empty:
	// pages whose host name is the host name of the request's Host header,
	// on any port and scheme (the demo on :8080 reaches :8083). Others get
	// 403.
	WSOrigins []string
	// HTTP bounds the connections of the HTTP API listener. Zero fields take
	// the defaults written beside them.
	HTTP HTTPLimits

	// DemoDir, if set, is served at /demo/ on the HTTP listener: the browser
	// demo in examples/browser (after npm ci there). Off by default.
	DemoDir string

	// Logger receives the node's logs. Default: discard.
	Logger *slog.Logger
}

// HTTPLimits bound the connections of the HTTP API (net/http.Server's
// settings of the same names).
type HTTPLimits struct {
	ReadHeaderTimeout time.Duration // request line and headers; default 10s
	ReadTimeout       time.Duration // the whole request, body included; default 30s
	WriteTimeout      time.Duration // from the end of the request headers to the end of the response; default 30s
	IdleTimeout       time.Duration // a keep-alive connection between requests; default 60s
	MaxHeaderBytes    int           // request line and headers; default 16 KiB
}

// Defaults of Config.
const (
	DefaultMaxPendingWrites = 1024
	DefaultMaxInflight      = 1024
	DefaultMaxPendingBytes  = 4 << 20
	DefaultWriteTimeout     = 10 * time.Second
	DefaultSessionExpiry    = 24 * time.Hour
	DefaultConnectTimeout   = 5 * time.Second
	DefaultMaxConnectSize   = 8 << 10
	DefaultMaxConnsPerIP    = 256
	DefaultMaxPreLogin      = 4096
)

// Defaults of HTTPLimits.
const (
	DefaultHTTPReadHeaderTimeout = 10 * time.Second
	DefaultHTTPReadTimeout       = 30 * time.Second
	DefaultHTTPWriteTimeout      = 30 * time.Second
	DefaultHTTPIdleTimeout       = 60 * time.Second
	DefaultHTTPMaxHeaderBytes    = 16 << 10
)

func (c Config) withDefaults() Config {
	if c.Node == "" {
		c.Node, _ = os.Hostname()
	}
	if c.MaxPayload == 0 {
		c.MaxPayload = bridge.DefaultMaxPayload
	}
	if c.MaxPendingWrites == 0 {
		c.MaxPendingWrites = DefaultMaxPendingWrites
	}
	if c.MaxPendingBytes == 0 {
		c.MaxPendingBytes = max(DefaultMaxPendingBytes, 4*c.MaxPayload)
	}
	if c.WriteTimeout == 0 {
		c.WriteTimeout = DefaultWriteTimeout
	}
	if c.MaxInflight == 0 {
		c.MaxInflight = DefaultMaxInflight
	}
	if c.SessionExpiry == 0 {
		c.SessionExpiry = DefaultSessionExpiry
	}
	if c.ShutdownGrace == 0 {
		c.ShutdownGrace = time.Second
	}
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = DefaultConnectTimeout
	}
	if c.MaxConnectSize == 0 {
		c.MaxConnectSize = min(DefaultMaxConnectSize, 4*c.MaxPayload)
	}
	if c.MaxConnsPerIP == 0 {
		c.MaxConnsPerIP = DefaultMaxConnsPerIP
	}
	if c.MaxPreLogin == 0 {
		c.MaxPreLogin = DefaultMaxPreLogin
	}
	h := &c.HTTP
	if h.ReadHeaderTimeout == 0 {
		h.ReadHeaderTimeout = DefaultHTTPReadHeaderTimeout
	}
	if h.ReadTimeout == 0 {
		h.ReadTimeout = DefaultHTTPReadTimeout
	}
	if h.WriteTimeout == 0 {
		h.WriteTimeout = DefaultHTTPWriteTimeout
	}
	if h.IdleTimeout == 0 {
		h.IdleTimeout = DefaultHTTPIdleTimeout
	}
	if h.MaxHeaderBytes == 0 {
		h.MaxHeaderBytes = DefaultHTTPMaxHeaderBytes
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

func (c Config) validate() error {
	switch {
	case c.DataDir == "":
		return errors.New("server: Config.DataDir is required")
	case len(c.Secret) < auth.MinSecretLen:
		return fmt.Errorf("server: Config.Secret must be at least %d bytes", auth.MinSecretLen)
	case c.MQTTAddr == "" && c.WSAddr == "" && c.MQTTTLSAddr == "" && c.WSSAddr == "":
		return errors.New("server: no MQTT listener: set MQTTAddr, WSAddr, MQTTTLSAddr or WSSAddr")
	case (c.MQTTTLSAddr != "" || c.WSSAddr != "") && (c.TLS == nil || len(c.TLS.Certificates) == 0 && c.TLS.GetCertificate == nil):
		return errors.New("server: a TLS listener needs Config.TLS with a certificate")
	case c.MaxPayload < 256 || c.MaxPayload > 64<<20:
		return fmt.Errorf("server: Config.MaxPayload %d is outside 256 bytes to 64 MiB", c.MaxPayload)
	case c.MaxPendingWrites < 1 || c.MaxPendingWrites > math.MaxInt32:
		return fmt.Errorf("server: Config.MaxPendingWrites %d is out of range", c.MaxPendingWrites)
	case c.MaxPendingBytes < max(2<<20, 2*c.MaxPayload) || c.MaxPendingBytes > 1<<30:
		return fmt.Errorf("server: Config.MaxPendingBytes %d is outside max(2 MiB, 2 x MaxPayload) to 1 GiB", c.MaxPendingBytes)
	case c.WriteTimeout < 10*time.Millisecond:
		return fmt.Errorf("server: Config.WriteTimeout %v is under 10ms", c.WriteTimeout)
	case c.MaxInflight < 1 || c.MaxInflight > math.MaxUint16:
		return fmt.Errorf("server: Config.MaxInflight %d is outside 1 to 65535", c.MaxInflight)
	case c.SessionExpiry < time.Second || c.SessionExpiry.Seconds() > math.MaxUint32:
		return fmt.Errorf("server: Config.SessionExpiry %v is out of range", c.SessionExpiry)
	case c.ShutdownGrace < 0:
		return errors.New("server: Config.ShutdownGrace is negative")
	case c.ConnectTimeout < 0:
		return errors.New("server: Config.ConnectTimeout is negative")
	case c.MaxConnectSize < 64 || c.MaxConnectSize > 4*c.MaxPayload:
		return fmt.Errorf("server: Config.MaxConnectSize %d is outside 64 bytes to the packet size %d", c.MaxConnectSize, 4*c.MaxPayload)
	case c.MaxConnsPerIP < -1:
		return fmt.Errorf("server: Config.MaxConnsPerIP %d is below -1", c.MaxConnsPerIP)
	case c.MaxPreLogin < -1:
		return fmt.Errorf("server: Config.MaxPreLogin %d is below -1", c.MaxPreLogin)
	case c.HTTP.ReadHeaderTimeout < 0 || c.HTTP.ReadTimeout < 0 || c.HTTP.WriteTimeout < 0 || c.HTTP.IdleTimeout < 0:
		return errors.New("server: a Config.HTTP timeout is negative")
	case c.HTTP.MaxHeaderBytes < 1<<10:
		return fmt.Errorf("server: Config.HTTP.MaxHeaderBytes %d is below 1 KiB", c.HTTP.MaxHeaderBytes)
	}
	for _, o := range c.WSOrigins {
		if err := checkOrigin(o); err != nil {
			return fmt.Errorf("server: Config.WSOrigins: %w", err)
		}
	}
	return nil
}

// checkOrigin accepts "*" and origins of the form scheme://host[:port].
func checkOrigin(o string) error {
	if o == "*" {
		return nil
	}
	u, err := url.Parse(o)
	if err != nil || u.Scheme == "" || u.Host == "" || u.Path != "" && u.Path != "/" || u.RawQuery != "" || u.User != nil {
		return fmt.Errorf("%q is not * or an origin such as https://chat.example.com", o)
	}
	return nil
}
