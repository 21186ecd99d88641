package bridge

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/imbridge/imbridge/auth"
)

// Config configures a Bridge. Zero fields take the defaults written beside them.
type Config struct {
	// DBPath is the bbolt history file. Required.
	DBPath string
	// Secret verifies tokens (HS256). Required, at least 16 bytes.
	Secret []byte
	// MaxPayload is the largest payload of a send, history or sync request, and
	// of an HTTP request body, in bytes. Default 64 KiB.
	MaxPayload int
	// MaxPageBytes caps the data of one history or sync page, in bytes; a page
	// holds at least one message and says More when cut short. Default 1 MiB.
	MaxPageBytes int
	// MaxSubscriptions caps the subscriptions one session holds (a device
	// needs 3: inbox, online, reply). Default 16.
	MaxSubscriptions int
	// OnlineRetryWindow is how long the id of an online-only send is
	// remembered, so that a retry with the same id is not delivered twice.
	// Default 2 minutes.
	OnlineRetryWindow time.Duration
	// LockTimeout is how long Open waits for another process to release the
	// history file. Default 2s.
	LockTimeout time.Duration
	// Logger receives connection events at info and per-message detail at
	// debug. Default: discard.
	Logger *slog.Logger
}

// Defaults of Config.
const (
	DefaultMaxPayload        = 64 << 10
	DefaultMaxPageBytes      = 1 << 20
	DefaultMaxSubscriptions  = 16
	DefaultOnlineRetryWindow = 2 * time.Minute
)

func (c Config) withDefaults() Config {
	if c.MaxPayload == 0 {
		c.MaxPayload = DefaultMaxPayload
	}
	if c.MaxPageBytes == 0 {
		c.MaxPageBytes = DefaultMaxPageBytes
	}
	if c.MaxSubscriptions == 0 {
		c.MaxSubscriptions = DefaultMaxSubscriptions
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
	case c.DBPath == "":
		return ErrNoDBPath
	case len(c.Secret) < auth.MinSecretLen:
		return fmt.Errorf("bridge: Config.Secret must be at least %d bytes", auth.MinSecretLen)
	case c.MaxPayload < 256:
		return fmt.Errorf("bridge: Config.MaxPayload %d is below 256 bytes", c.MaxPayload)
	case c.MaxPageBytes < c.MaxPayload:
		return fmt.Errorf("bridge: Config.MaxPageBytes %d is below MaxPayload %d", c.MaxPageBytes, c.MaxPayload)
	case c.MaxSubscriptions < 3:
		return fmt.Errorf("bridge: Config.MaxSubscriptions %d is below the 3 a device needs", c.MaxSubscriptions)
	case c.OnlineRetryWindow < 0 || c.LockTimeout < 0:
		return fmt.Errorf("bridge: negative duration in Config")
	}
	return nil
}
