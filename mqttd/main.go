// Command mqttd runs an imbridge node: an MQTT broker (TCP and WebSocket)
// with imbridge's messaging rules, its bbolt history and its HTTP API.
//
//	mqttd [flags]                     run the node
//	mqttd token [-ttl 24h] USER       print a user token
//	mqttd token -admin [-ttl 1h] NAME print an admin token (HTTP send API)
//
// Every flag has an environment variable, named in mqttd -help.
package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/imbridge/imbridge/auth"
	"github.com/imbridge/imbridge/bridge"
	"github.com/imbridge/imbridge/server"
	"github.com/imbridge/imbridge/storage"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "mqttd:", err)
		}
		os.Exit(2)
	}
}

// options are the command line of the node.
type options struct {
	mqtt, ws, http, data, secret, logLevel, demo string
	mqtts, wss, tlsCert, tlsKey                  string
	maxPayload, maxPending, maxInflight          int
	sessionExpiry, shutdownTimeout               time.Duration
	limits                                       bridge.Limits
	retentionAge                                 time.Duration
	retentionCount                               int
	maxPendingBytes                              int
	writeTimeout                                 time.Duration
}

// envOr returns the environment variable name, or def.
func envOr(name, def string) string {
	if v, ok := os.LookupEnv(name); ok {
		return v
	}
	return def
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("mqttd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.mqtt, "mqtt", ":1883", "MQTT over TCP listen address; empty disables")
	fs.StringVar(&o.ws, "ws", ":8083", "MQTT over WebSocket listen address; empty disables")
	fs.StringVar(&o.http, "http", ":8080", "HTTP API listen address; empty disables")
	fs.StringVar(&o.mqtts, "mqtts", "", "MQTT over TLS listen address, e.g. :8883; needs -tls-cert and -tls-key")
	fs.StringVar(&o.wss, "wss", "", "MQTT over WebSocket with TLS listen address, e.g. :8084; needs -tls-cert and -tls-key")
	fs.StringVar(&o.tlsCert, "tls-cert", "", "PEM certificate (chain) file for -mqtts and -wss")
	fs.StringVar(&o.tlsKey, "tls-key", "", "PEM private key file for -mqtts and -wss")
	fs.StringVar(&o.data, "data", "./data", "data directory: history.db and the generated secret")
	fs.StringVar(&o.secret, "secret", "", "token secret, at least 16 bytes; default: generated once into DATA/secret")
	fs.StringVar(&o.logLevel, "log", "info", "log level: debug, info, warn, error")
	fs.StringVar(&o.demo, "demo", "", "serve this directory at /demo/ (the browser demo: examples/browser, after npm ci there)")
	fs.IntVar(&o.maxPayload, "max-payload", 64<<10, "largest send/history/sync request payload, bytes")
	fs.IntVar(&o.maxPending, "max-pending", server.DefaultMaxPendingWrites, "per-device queue of messages waiting for its socket")
	fs.IntVar(&o.maxInflight, "max-inflight", server.DefaultMaxInflight, "unacknowledged QoS 1 deliveries a session may hold (1-65535)")
	fs.IntVar(&o.limits.MaxDevicesPerUser, "max-devices", 10, "sessions (connected or persistent) per user")
	fs.Float64Var(&o.limits.ConnectRatePerIP, "connect-rate-ip", 20, "CONNECT attempts per second per IP, bursts of 50; -1: no limit")
	fs.Float64Var(&o.limits.ConnectRatePerUser, "connect-rate-user", 5, "CONNECT attempts per second per user, bursts of 10; -1: no limit")
	fs.Float64Var(&o.limits.SendRate, "send-rate", 50, "sends per second per user, bursts of 100; low priority is refused first; -1: no limit")
	fs.DurationVar(&o.retentionAge, "retention-age", 0, "prune stored messages older than this, per conversation; 0 keeps them")
	fs.IntVar(&o.retentionCount, "retention-count", 0, "keep only the newest N stored messages of each conversation; 0 keeps all")
	// Writes to a device never wait for its socket; one that does not read is disconnected.
	fs.IntVar(&o.maxPendingBytes, "max-pending-bytes", 0, "bytes written to a device but not yet taken by its socket; beyond it the device is disconnected as a slow consumer. Default 4 MiB, or 4 x -max-payload if larger; at least 2 MiB and 2 x -max-payload")
	fs.DurationVar(&o.writeTimeout, "write-timeout", server.DefaultWriteTimeout, "how long a device's socket may take nothing while data waits for it; then the device is disconnected as a slow consumer")
	fs.DurationVar(&o.sessionExpiry, "session-expiry", server.DefaultSessionExpiry, "longest time a disconnected persistent session is kept")
	fs.DurationVar(&o.shutdownTimeout, "shutdown-timeout", 10*time.Second, "longest graceful stop on SIGINT/SIGTERM")

	// Every flag -some-name has the environment variable MQTTD_SOME_NAME,
	// read through the flag's own parser; the command line wins over it.
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		env := envName(f.Name)
		f.Usage += " (env " + env + ")"
		if v, ok := os.LookupEnv(env); ok {
			if err := f.Value.Set(v); err != nil {
				errs = append(errs, fmt.Errorf("%s=%q: %w", env, v, err))
			}
		}
	})
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "Usage: mqttd [flags]\n       mqttd token [-ttl 24h] [-admin] USER\n\nFlags:")
		fs.PrintDefaults()
	}
	if err := errors.Join(errs...); err != nil {
		return o, err
	}
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q (did you mean mqttd token?)", fs.Arg(0))
	}
	return o, nil
}

// envName returns the environment variable of a flag: -max-payload is
// MQTTD_MAX_PAYLOAD.
func envName(flagName string) string {
	return "MQTTD_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "token" {
		return runToken(args[1:], stdout, stderr)
	}
	o, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return fmt.Errorf("-log: %w", err)
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	secret, err := loadSecret(o.secret, o.data)
	if err != nil {
		return err
	}
	var tlsConfig *tls.Config
	if o.mqtts != "" || o.wss != "" {
		if o.tlsCert == "" || o.tlsKey == "" {
			return errors.New("-mqtts and -wss need -tls-cert and -tls-key")
		}
		cert, err := tls.LoadX509KeyPair(o.tlsCert, o.tlsKey)
		if err != nil {
			return fmt.Errorf("TLS certificate: %w", err)
		}
		tlsConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	srv, err := server.New(server.Config{
		MQTTTLSAddr: o.mqtts, WSSAddr: o.wss, TLS: tlsConfig,
		MQTTAddr: o.mqtt, WSAddr: o.ws, HTTPAddr: o.http, DataDir: o.data, Secret: secret,
		MaxPayload: o.maxPayload, MaxPendingWrites: o.maxPending, MaxInflight: o.maxInflight,
		MaxPendingBytes: o.maxPendingBytes, WriteTimeout: o.writeTimeout,
		SessionExpiry: o.sessionExpiry, DemoDir: o.demo, Limits: o.limits, Logger: log,
		Retention: storage.Retention{MaxAge: o.retentionAge, MaxCount: uint64(max(0, o.retentionCount))},
	})
	if err != nil {
		return err
	}
	if err := srv.Start(); err != nil {
		return err
	}
	log.Info("mqttd ready", "mqtt", srv.MQTTAddr(), "ws", srv.WSAddr(), "http", srv.HTTPAddr(),
		"mqtts", srv.MQTTTLSAddr(), "wss", srv.WSSAddr(), "data", o.data)
	<-ctx.Done()
	log.Info("stopping")
	sctx, cancel := context.WithTimeout(context.Background(), o.shutdownTimeout)
	defer cancel()
	return srv.Shutdown(sctx)
}

// loadSecret returns the flag's secret, or the one in DATA/secret, creating
// it (32 random bytes, hex, mode 0600) on first start.
func loadSecret(flagValue, dataDir string) ([]byte, error) {
	if flagValue != "" {
		if len(flagValue) < auth.MinSecretLen {
			return nil, fmt.Errorf("-secret must be at least %d bytes", auth.MinSecretLen)
		}
		return []byte(flagValue), nil
	}
	path := filepath.Join(dataDir, "secret")
	b, err := os.ReadFile(path)
	if err == nil {
		s := strings.TrimSpace(string(b))
		if len(s) < auth.MinSecretLen {
			return nil, fmt.Errorf("%s: secret shorter than %d bytes", path, auth.MinSecretLen)
		}
		return []byte(s), nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("read secret: %w", err)
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return nil, err
	}
	s := hex.EncodeToString(raw)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) { // another mqttd raced us: use its secret
		return loadSecret("", dataDir)
	}
	if err != nil {
		return nil, fmt.Errorf("create secret: %w", err)
	}
	if _, err := f.WriteString(s + "\n"); err != nil {
		f.Close()
		return nil, fmt.Errorf("write secret: %w", err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("write secret: %w", err)
	}
	return []byte(s), nil
}

func runToken(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("mqttd token", flag.ContinueOnError)
	fs.SetOutput(stderr)
	ttl := fs.Duration("ttl", 24*time.Hour, "how long the token is valid")
	admin := fs.Bool("admin", false, "mint an admin token (HTTP send API as any user) instead of a user token")
	data := fs.String("data", envOr(envName("data"), "./data"), "data directory holding the secret (env MQTTD_DATA)")
	secretFlag := fs.String("secret", os.Getenv(envName("secret")), "token secret (env MQTTD_SECRET); default: DATA/secret")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "Usage: mqttd token [-ttl 24h] [-admin] USER\n\nFlags:")
		fs.PrintDefaults()
	}
	// Accept flags before and after the user ID.
	var rest []string
	for {
		if err := fs.Parse(args); err != nil {
			return err
		}
		if fs.NArg() == 0 {
			break
		}
		rest = append(rest, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if len(rest) != 1 {
		fs.Usage()
		return errors.New("token: give exactly one user ID")
	}
	secret, err := loadSecret(*secretFlag, *data)
	if err != nil {
		return err
	}
	var tok string
	if *admin {
		tok, err = auth.MintAdmin(secret, rest[0], *ttl)
	} else {
		tok, err = auth.Mint(secret, rest[0], *ttl)
	}
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, tok)
	return nil
}
