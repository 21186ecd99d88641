package server

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"time"

	"github.com/imbridge/imbridge/auth"
	"github.com/imbridge/imbridge/bridge"
	"github.com/imbridge/imbridge/storage"
)

// Config configures a Server. Zero fields take the defaults written beside
// them; an empty address disables that listener.
type Config struct {
	MQTTAddr string // MQTT over TCP, e.g. ":1883"
	WSAddr   string // MQTT over WebSocket, e.g. ":8083"; any path is accepted
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
	// Secret verifies tokens. Required, at least 16 bytes.
	Secret []byte

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

	// DemoDir, if set, is served at /demo/ on the HTTP listener: the browser
	// demo in examples/browser (after npm ci there). Off by default.
	DemoDir string

	// Logger receives the node's logs. Default: discard.
	Logger *slog.Logger
}

// Defaults of Config.
const (
	DefaultMaxPendingWrites = 1024
	DefaultMaxInflight      = 1024
	DefaultMaxPendingBytes  = 4 << 20
	DefaultWriteTimeout     = 10 * time.Second
	DefaultSessionExpiry    = 24 * time.Hour
)

func (c Config) withDefaults() Config {
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
	}
	return nil
}
