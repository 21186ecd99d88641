package bridge

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/imbridge/imbridge/auth"
	"github.com/imbridge/imbridge/storage"
)

// Config configures a Bridge. Zero fields take the defaults written beside them.
type Config struct {
	// DBPath is the bbolt history file. Required unless OpenStore is set.
	DBPath string
	// OpenStore, when set, opens the history instead of the bbolt file at
	// DBPath (for example postgres.Open), with the options the bridge needs
	// (its OnCommit, Observe, quota and logger). The bridge closes the store.
	OpenStore func(*storage.Options) (storage.Store, error)
	// Secret verifies tokens (HS256). Required, at least 16 bytes.
	Secret []byte
	// Tokens are the optional checks of tokens: a required audience and a
	// longest lifetime. Zero: none.
	Tokens auth.VerifierOptions
	// MaxPayload is the largest payload of a send, history or sync request, and
	// of an HTTP request body, in bytes. Default 64 KiB.
	MaxPayload int
	// MaxPageBytes caps the data of one history or sync page, in bytes; a page
	// holds at least one message and says More when cut short. Default 1 MiB.
	MaxPageBytes int
	// Limits are the per-user and per-IP limits.
	Limits
	// OnlineRetryWindow is how long the id of an online-only send is
	// remembered, so that a retry with the same id is not delivered twice.
	// Default 2 minutes.
	OnlineRetryWindow time.Duration
	// SendTimeout bounds how long a send over MQTT waits for its commit
	// (a hung disk): past it the sender gets error store_failed, and a retry
	// with the same id is safe (the message may still be committed once).
	// Default 10s.
	SendTimeout time.Duration
	// LockTimeout is how long Open waits for another process to release the
	// history file. Default 2s. bbolt only.
	LockTimeout time.Duration
	// Retention prunes each conversation in the background: messages older
	// than MaxAge, and all but the newest MaxCount. Zero: keep everything.
	Retention storage.Retention
	// PruneInterval is how often pruning runs when Retention is set.
	// Default 1 minute.
	PruneInterval time.Duration
	// Router joins this node to the other nodes of a cluster (package
	// cluster). Default: Alone, a single node.
	Router Router
	// Observer receives timings, for metrics. Zero: none.
	Observer Observer
	// Logger receives connection events at info and per-message detail at
	// debug. Default: discard.
	Logger *slog.Logger
}

// Observer receives timings as they happen; a nil field is not called. The
// functions must be quick and safe for concurrent use.
type Observer struct {
	// Commit is called after each history commit with its duration (fsync
	// included) and number of messages.
	Commit func(d time.Duration, messages int)
	// Query is called after each history ("history") or sync ("sync") query.
	Query func(kind string, d time.Duration)
}

// Limits are the limits a node enforces per session, user and IP. Zero
// fields take the defaults written beside them.
type Limits struct {
	// MaxSubscriptions caps the subscriptions one session holds (a device
	// needs 3: inbox, online, reply). Default 16.
	MaxSubscriptions int
	// MaxDevicesPerUser caps a user's sessions, connected or persistent; a
	// CONNECT beyond it is refused unless it resumes one of them. Default 10.
	MaxDevicesPerUser int
	// ConnectRatePerIP and ConnectRatePerUser limit CONNECT attempts (token
	// buckets: so many per second, with bursts of ConnectBurst). The per-IP
	// bucket (IPv6: per /64) is charged first; the per-user one only after
	// the token was verified, so nobody can spend another user's. Defaults
	// 20/s per IP and 5/s per user, bursts of 100 and 30 (a person scripting
	// mosquitto_rr calls does not hit them); -1 turns a limit off.
	ConnectRatePerIP   float64
	ConnectBurstPerIP  int
	ConnectRatePerUser float64
	ConnectBurstUser   int
	// LoginFailureRatePerIP and LoginFailureBurstPerIP bound failed logins
	// (bad username or token) per IP (IPv6: per /64): after a burst of
	// failures, CONNECTs from that address are refused before their token is
	// looked at, until the bucket refills. Defaults 0.2/s (12 a minute) and
	// 20; -1 turns it off.
	LoginFailureRatePerIP  float64
	LoginFailureBurstPerIP int
	// QueryRate and QueryBurst limit each user's history and sync requests
	// (MQTT and HTTP together). Defaults 20/s and 50; -1 turns it off.
	QueryRate  float64
	QueryBurst int
	// SendRate limits each user's sends from devices and user tokens (not
	// admin sends): so many per second, with bursts of SendBurst. When a
	// user's bucket runs low, low-priority sends are refused first (below half
	// the burst), then normal and default ones (below a fifth), high ones
	// last. Defaults 50/s and 100; -1 turns it off.
	SendRate  float64
	SendBurst int
	// MaxSessionBytes caps the payload bytes of the stored-message
	// deliveries mochi holds for one session (in flight, or queued while the
	// device is away): a delivery beyond it is skipped and counted, and the
	// device fills the gap by sync. Default 8 MiB.
	MaxSessionBytes int64
	// MaxUserBytes caps the bytes of stored messages a user has sent that the
	// history still holds (retention frees them); a send over it gets error
	// quota_exceeded. Default 1 GiB; -1 turns it off.
	MaxUserBytes int64
}

// Defaults of Config.
const (
	DefaultMaxPayload        = 64 << 10
	DefaultMaxPageBytes      = 1 << 20
	DefaultMaxSubscriptions  = 16
	DefaultOnlineRetryWindow = 2 * time.Minute
	DefaultMaxSessionBytes   = 8 << 20
	DefaultMaxUserBytes      = 1 << 30
	DefaultSendTimeout       = 10 * time.Second
)

func (c Config) withDefaults() Config {
	if c.Router == nil {
		c.Router = Alone{}
	}
	if c.OpenStore == nil && c.DBPath != "" {
		path := c.DBPath
		c.OpenStore = func(o *storage.Options) (storage.Store, error) { return storage.OpenBolt(path, o) }
	}
	if c.MaxPayload == 0 {
		c.MaxPayload = DefaultMaxPayload
	}
	if c.MaxPageBytes == 0 {
		c.MaxPageBytes = DefaultMaxPageBytes
	}
	if c.MaxSubscriptions == 0 {
		c.MaxSubscriptions = DefaultMaxSubscriptions
	}
	if c.PruneInterval == 0 {
		c.PruneInterval = time.Minute
	}
	if c.MaxDevicesPerUser == 0 {
		c.MaxDevicesPerUser = 10
	}
	defaultRate := func(r *float64, b *int, rate float64, burst int) {
		if *r == 0 {
			*r = rate
		}
		if *b == 0 {
			*b = burst
		}
		if *r < 0 {
			*r = 0 // off
		}
	}
	defaultRate(&c.ConnectRatePerIP, &c.ConnectBurstPerIP, 20, 100)
	defaultRate(&c.ConnectRatePerUser, &c.ConnectBurstUser, 5, 30)
	defaultRate(&c.LoginFailureRatePerIP, &c.LoginFailureBurstPerIP, 0.2, 20)
	defaultRate(&c.SendRate, &c.SendBurst, 50, 100)
	defaultRate(&c.QueryRate, &c.QueryBurst, 20, 50)
	switch c.MaxUserBytes {
	case 0:
		c.MaxUserBytes = DefaultMaxUserBytes
	case -1:
		c.MaxUserBytes = 0 // storage: no limit
	}
	if c.MaxSessionBytes == 0 {
		c.MaxSessionBytes = DefaultMaxSessionBytes
	}
	if c.SendTimeout == 0 {
		c.SendTimeout = DefaultSendTimeout
	}
	if c.OnlineRetryWindow == 0 {
		c.OnlineRetryWindow = DefaultOnlineRetryWindow
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

func (c Config) validate() error {
	switch {
	case c.DBPath == "" && c.OpenStore == nil:
		return ErrNoDBPath
	case len(c.Secret) < auth.MinSecretLen:
		return fmt.Errorf("bridge: Config.Secret must be at least %d bytes", auth.MinSecretLen)
	case c.MaxPayload < 256:
		return fmt.Errorf("bridge: Config.MaxPayload %d is below 256 bytes", c.MaxPayload)
	case c.MaxPageBytes < c.MaxPayload:
		return fmt.Errorf("bridge: Config.MaxPageBytes %d is below MaxPayload %d", c.MaxPageBytes, c.MaxPayload)
	case c.MaxDevicesPerUser < 1:
		return fmt.Errorf("bridge: Config.MaxDevicesPerUser %d is below 1", c.MaxDevicesPerUser)
	case c.ConnectBurstPerIP < 1 || c.ConnectBurstUser < 1 || c.SendBurst < 1 || c.LoginFailureBurstPerIP < 1 || c.QueryBurst < 1:
		return fmt.Errorf("bridge: bursts must be at least 1")
	case c.MaxSubscriptions < 3:
		return fmt.Errorf("bridge: Config.MaxSubscriptions %d is below the 3 a device needs", c.MaxSubscriptions)
	case c.MaxSessionBytes < int64(c.MaxPayload):
		return fmt.Errorf("bridge: Config.MaxSessionBytes %d is below MaxPayload %d", c.MaxSessionBytes, c.MaxPayload)
	case c.OnlineRetryWindow < 0 || c.LockTimeout < 0 || c.SendTimeout < 0:
		return fmt.Errorf("bridge: negative duration in Config")
	}
	return nil
}
