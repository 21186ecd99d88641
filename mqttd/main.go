// Command mqttd runs an imbridge node: an MQTT broker (TCP and WebSocket)
// with imbridge's messaging rules, its bbolt history and its HTTP API.
//
//	mqttd [flags]                     run the node
//	mqttd token [-ttl 24h] USER       print a user token
//	mqttd token -admin [-ttl 1h] NAME print an admin token (HTTP send API)
//	mqttd token -audience AUD USER    a token with "aud" (for -token-audience)
//
// Every flag has an environment variable, named in mqttd -help. mqttd
// generates the token secret into DATA/secret on its first start unless
// given one; mqttd token only ever reads it.
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
	"github.com/imbridge/imbridge/storage/postgres"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) { // -h, -help: the usage went to stdout
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "mqttd:", err)
		os.Exit(2)
	}
}

// options are the command line of the node.
type options struct {
	mqtt, ws, http, data, secret, logLevel, demo string
	secretFile                                   string
	nats, node                                   string
	mqtts, wss, tlsCert, tlsKey                  string
	maxPayload, maxPending, maxInflight          int
	sessionExpiry, shutdownTimeout               time.Duration
	limits                                       bridge.Limits
	tokens                                       auth.VerifierOptions
	retentionAge                                 time.Duration
	retentionCount                               int
	connectTimeout                               time.Duration
	maxConnectSize, maxConnsPerIP, maxPreLogin   int
	wsOrigins                                    string
	maxPendingBytes                              int
	writeTimeout                                 time.Duration
	postgres                                     string
}

// envOr returns the environment variable name, or def.
func envOr(name, def string) string {
	if v, ok := os.LookupEnv(name); ok {
		return v
	}
	return def
}

// secretHelp is the usage of -secret, for both commands.
const secretHelp = "token secret, at least 16 bytes; visible to every user of this machine in ps: prefer -secret-file or the environment variable"

// secretFileHelp is the usage of -secret-file, for both commands.
const secretFileHelp = "file holding the token secret (surrounding white space ignored), instead of -secret"

// parseUsage parses args with fs. On -h or -help it prints the usage to
// stdout and returns flag.ErrHelp; on a bad flag, the error and the usage go
// to fs.Output().
func parseUsage(fs *flag.FlagSet, args []string, stdout io.Writer) error {
	usage := fs.Usage
	fs.Usage = func() {} // printed below, where it belongs
	defer func() { fs.Usage = usage }()
	err := fs.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		out := fs.Output()
		fs.SetOutput(stdout)
		usage()
		fs.SetOutput(out)
	} else if err != nil {
		usage()
	}
	return err
}

func parseFlags(args []string, stdout, stderr io.Writer) (options, error) {
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
	fs.StringVar(&o.postgres, "postgres", "", "keep the history in this PostgreSQL database instead of DATA/history.db, e.g. postgres://imbridge@127.0.0.1:5432/imbridge?sslmode=disable; the schema is created and migrated at start")
	fs.StringVar(&o.secret, "secret", "", secretHelp+"; default: generated once into DATA/secret")
	fs.StringVar(&o.secretFile, "secret-file", "", secretFileHelp)
	fs.StringVar(&o.tokens.Audience, "token-audience", "", "if set, tokens must carry this \"aud\" (mqttd token -audience mints such tokens)")
	fs.DurationVar(&o.tokens.MaxLifetime, "token-max-lifetime", 0, "refuse tokens valid for longer: exp-iat, or exp-now, over this; 0: no limit")
	fs.StringVar(&o.logLevel, "log", "info", "log level: debug, info, warn, error")
	fs.StringVar(&o.demo, "demo", "", "serve the browser demo in this directory at /demo/: examples/browser, after npm ci there (its page, script and MQTT.js bundle only)")
	fs.IntVar(&o.maxPayload, "max-payload", 64<<10, "largest send/history/sync request payload, bytes")
	fs.IntVar(&o.maxPending, "max-pending", server.DefaultMaxPendingWrites, "per-device queue of messages waiting for its socket")
	fs.IntVar(&o.maxInflight, "max-inflight", server.DefaultMaxInflight, "unacknowledged QoS 1 deliveries a session may hold (1-65535)")
	fs.IntVar(&o.limits.MaxDevicesPerUser, "max-devices", 10, "sessions (connected or persistent) per user")
	fs.Float64Var(&o.limits.ConnectRatePerIP, "connect-rate-ip", 20, "CONNECT attempts per second per IP (IPv6: per /64), bursts of 100; -1: no limit")
	fs.Float64Var(&o.limits.ConnectRatePerUser, "connect-rate-user", 5, "CONNECT attempts per second per user, bursts of 30, charged only after the token is verified; -1: no limit")
	fs.Float64Var(&o.limits.LoginFailureRatePerIP, "login-failure-rate-ip", 0.2, "failed logins per second per IP (IPv6: per /64), bursts of 20; past them the address's CONNECTs are refused; -1: no limit")
	fs.Float64Var(&o.limits.QueryRate, "query-rate", 20, "history and sync requests per second per user, bursts of 50; -1: no limit")
	fs.Int64Var(&o.limits.MaxUserBytes, "max-user-bytes", 1<<30, "bytes of stored messages one user may have sent that the history still holds (retention frees them); over it sends get quota_exceeded; -1: no limit")
	fs.Int64Var(&o.limits.MaxSessionBytes, "max-session-bytes", 8<<20, "stored-message bytes one session may hold in flight or queued while away; beyond it deliveries are skipped and found by sync")
	fs.Float64Var(&o.limits.SendRate, "send-rate", 50, "sends per second per user, bursts of 100; low priority is refused first; -1: no limit")
	fs.DurationVar(&o.retentionAge, "retention-age", 0, "prune stored messages older than this, per conversation; 0 keeps them")
	fs.IntVar(&o.retentionCount, "retention-count", 0, "keep only the newest N stored messages of each conversation; 0 keeps all")
	// Writes to a device never wait for its socket; one that does not read is disconnected.
	fs.IntVar(&o.maxPendingBytes, "max-pending-bytes", 0, "bytes written to a device but not yet taken by its socket; beyond it the device is disconnected as a slow consumer. Default 4 MiB, or 4 x -max-payload if larger; at least 2 MiB and 2 x -max-payload")
	fs.DurationVar(&o.writeTimeout, "write-timeout", server.DefaultWriteTimeout, "how long a device's socket may take nothing while data waits for it; then the device is disconnected as a slow consumer")
	fs.DurationVar(&o.sessionExpiry, "session-expiry", server.DefaultSessionExpiry, "longest time a disconnected persistent session is kept")
	fs.DurationVar(&o.shutdownTimeout, "shutdown-timeout", 10*time.Second, "longest graceful stop on SIGINT/SIGTERM")
	fs.DurationVar(&o.connectTimeout, "connect-timeout", server.DefaultConnectTimeout, "time a socket has from accept to send a complete CONNECT (TLS handshake and WebSocket upgrade included)")
	fs.IntVar(&o.maxConnectSize, "max-connect-size", server.DefaultMaxConnectSize, "largest CONNECT packet, bytes after its fixed header; larger closes the socket before its body is read")
	fs.IntVar(&o.maxConnsPerIP, "max-conns-per-ip", server.DefaultMaxConnsPerIP, "open sockets per IPv4 address or IPv6 /64, all listeners, logged in or not; -1: no cap")
	fs.IntVar(&o.maxPreLogin, "max-prelogin", server.DefaultMaxPreLogin, "MQTT sockets without a complete CONNECT yet, all listeners; -1: no cap")
	fs.StringVar(&o.nats, "nats", "", "join a cluster through these NATS servers, nats://HOST:PORT[,nats://...]; needs -postgres, and -secret or -secret-file shared by all nodes")
	fs.StringVar(&o.node, "node", "", "this node's name in logs, /healthz and /metrics, unique in a cluster; default: the host name")
	fs.StringVar(&o.wsOrigins, "ws-origins", "", "comma-separated origins (https://app.example.com) whose browser pages may use MQTT over WebSocket, or *; default: pages on the request's own host name")

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
	if err := parseUsage(fs, args, stdout); err != nil {
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
	o, err := parseFlags(args, stdout, stderr)
	if err != nil {
		return err
	}
	if o.tokens.MaxLifetime < 0 {
		return errors.New("-token-max-lifetime must not be negative")
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return fmt.Errorf("-log: %w", err)
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	nats := splitList(o.nats)
	if len(nats) > 0 && o.postgres == "" {
		return errors.New("-nats needs -postgres: the nodes of a cluster share one history, and a bbolt file cannot be shared")
	}
	if len(nats) > 0 && o.secret == "" && o.secretFile == "" {
		return errors.New("-nats needs -secret or -secret-file: every node of a cluster must verify the same tokens")
	}
	node := o.node
	if node == "" {
		node, _ = os.Hostname()
	}
	if len(nats) > 0 {
		log = log.With("node", node)
	}
	secret, err := loadSecret(o.secret, o.secretFile, o.data, log)
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
		MQTTAddr: o.mqtt, WSAddr: o.ws, HTTPAddr: o.http, DataDir: o.data, Secret: secret, Tokens: o.tokens,
		MaxPayload: o.maxPayload, MaxPendingWrites: o.maxPending, MaxInflight: o.maxInflight,
		MaxPendingBytes: o.maxPendingBytes, WriteTimeout: o.writeTimeout,
		SessionExpiry: o.sessionExpiry, DemoDir: o.demo, Limits: o.limits, Logger: log,
		Retention: storage.Retention{MaxAge: o.retentionAge, MaxCount: uint64(max(0, o.retentionCount))},

		ConnectTimeout: o.connectTimeout, MaxConnectSize: o.maxConnectSize, MaxConnsPerIP: o.maxConnsPerIP,
		MaxPreLogin: o.maxPreLogin, WSOrigins: splitList(o.wsOrigins),
		OpenStore: openStore(ctx, o.postgres),
		NATS:      nats, Node: node,
	})
	if err != nil {
		return err
	}
	if err := srv.Start(); err != nil {
		return err
	}
	log.Info("mqttd ready", "mqtt", srv.MQTTAddr(), "ws", srv.WSAddr(), "http", srv.HTTPAddr(),
		"mqtts", srv.MQTTTLSAddr(), "wss", srv.WSSAddr(), "data", o.data, "postgres", o.postgres != "", "epoch", srv.Bridge().Epoch())
	<-ctx.Done()
	log.Info("stopping")
	sctx, cancel := context.WithTimeout(context.Background(), o.shutdownTimeout)
	defer cancel()
	return srv.Shutdown(sctx)
}

// openStore returns how to open the history given -postgres: nil (bbolt in
// the data directory) without it. Opening gives up after 30 s.
func openStore(ctx context.Context, dsn string) func(*storage.Options) (storage.Store, error) {
	if dsn == "" {
		return nil
	}
	return func(o *storage.Options) (storage.Store, error) {
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		return postgres.Open(ctx, dsn, o)
	}
}

// splitList splits a comma-separated flag value, dropping empty items.
func splitList(v string) []string {
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// errNoSecret is mqttd token's error when it finds no secret.
var errNoSecret = errors.New("no token secret")

// secretSource says where a secret comes from: -secret, -secret-file or the
// data directory.
type secretSource struct{ value, file, data string }

// read returns the secret, or errNoSecret when it is to come from a data
// directory that has none. Its second result names where it was found.
func (src secretSource) read() (secret []byte, from string, err error) {
	switch {
	case src.value != "" && src.file != "":
		return nil, "", fmt.Errorf("both -secret (%s) and -secret-file (%s) are set: give one", envName("secret"), envName("secret-file"))
	case src.value != "":
		if len(src.value) < auth.MinSecretLen {
			return nil, "", fmt.Errorf("-secret must be at least %d bytes", auth.MinSecretLen)
		}
		return []byte(src.value), "-secret", nil
	case src.file != "":
		return readSecretFile(src.file, "-secret-file ")
	}
	path := filepath.Join(src.data, "secret")
	secret, from, err = readSecretFile(path, "")
	if errors.Is(err, os.ErrNotExist) {
		return nil, "", errNoSecret
	}
	return secret, from, err
}

// readSecretFile reads a secret from path; what prefixes path in errors.
func readSecretFile(path, what string) ([]byte, string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, "", fmt.Errorf("read secret: %w", err)
	}
	s := strings.TrimSpace(string(b))
	if len(s) < auth.MinSecretLen {
		return nil, "", fmt.Errorf("%s%s: secret shorter than %d bytes", what, path, auth.MinSecretLen)
	}
	return []byte(s), absPath(path), nil
}

// absPath is path made absolute, for messages; path itself if that fails.
func absPath(path string) string {
	if abs, err := filepath.Abs(path); err == nil {
		return abs
	}
	return path
}

// loadSecret returns the secret of -secret, -secret-file or DATA/secret,
// creating the latter (32 random bytes, hex, mode 0600) on first start. It
// logs where the secret comes from, never the secret.
func loadSecret(value, file, dataDir string, log *slog.Logger) ([]byte, error) {
	secret, from, err := secretSource{value, file, dataDir}.read()
	if err == nil {
		log.Info("token secret", "from", from)
		return secret, nil
	}
	if !errors.Is(err, errNoSecret) {
		return nil, err
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return nil, err
	}
	s := hex.EncodeToString(raw)
	path := filepath.Join(dataDir, "secret")
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) { // another mqttd raced us: use its secret
		return loadSecret("", "", dataDir, log)
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
	log.Info("generated a token secret", "file", absPath(path),
		"note", "mqttd token reads it: run it with the same -data, or give it -secret-file "+absPath(path))
	return []byte(s), nil
}

func runToken(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("mqttd token", flag.ContinueOnError)
	fs.SetOutput(stderr)
	ttl := fs.Duration("ttl", 24*time.Hour, "how long the token is valid")
	admin := fs.Bool("admin", false, "mint an admin token (HTTP send API as any user) instead of a user token")
	data := fs.String("data", envOr(envName("data"), "./data"), "mqttd's data directory, whose secret file is read (env MQTTD_DATA)")
	secretFlag := fs.String("secret", os.Getenv(envName("secret")), secretHelp+" (env MQTTD_SECRET); default: DATA/secret")
	secretFile := fs.String("secret-file", os.Getenv(envName("secret-file")), secretFileHelp+" (env MQTTD_SECRET_FILE)")
	audience := fs.String("audience", os.Getenv(envName("token-audience")),
		"the token's \"aud\" claim: what mqttd -token-audience requires (env MQTTD_TOKEN_AUDIENCE)")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "Usage: mqttd token [-ttl 24h] [-admin] USER\n\n"+
			"Prints a token signed with mqttd's secret: -secret, -secret-file, or the file\n"+
			"secret in mqttd's data directory (-data). It never creates a secret.\n\nFlags:")
		fs.PrintDefaults()
	}
	// Accept flags before and after the user ID.
	var rest []string
	for {
		if err := parseUsage(fs, args, stdout); err != nil {
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
	secret, _, err := secretSource{*secretFlag, *secretFile, *data}.read()
	if errors.Is(err, errNoSecret) {
		return fmt.Errorf("%w: %s does not exist, and mqttd token never creates one (mqttd does, in its data directory, on first start).\n"+
			"Point it at mqttd's data directory with -data DIR (env MQTTD_DATA), or give the secret with "+
			"-secret-file FILE (env MQTTD_SECRET_FILE) or -secret (env MQTTD_SECRET)", err, absPath(filepath.Join(*data, "secret")))
	}
	if err != nil {
		return err
	}
	var opts []auth.MintOption
	if *audience != "" {
		opts = append(opts, auth.WithAudience(*audience))
	}
	var tok string
	if *admin {
		tok, err = auth.MintAdmin(secret, rest[0], *ttl, opts...)
	} else {
		tok, err = auth.Mint(secret, rest[0], *ttl, opts...)
	}
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, tok)
	return nil
}
