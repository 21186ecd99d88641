// Package auth mints and verifies imbridge's access tokens: JWTs signed with
// HS256 and a secret shared by mqttd and the app servers that mint tokens.
//
// # Basics
//
// A user token has "sub" = the user ID and "exp". An admin token also has
// "scope": "admin"; it may call the HTTP send API on behalf of any user, and
// it is never accepted as an MQTT password. Any JWT library can mint both.
//
// # Caveats
//
// A [Verifier] is safe for concurrent use. Verification allows one minute of
// clock skew on "exp" and "nbf". [VerifierOptions] add two optional checks:
// an audience ("aud") the tokens must carry, and a longest lifetime.
package auth

import (
	"errors"
	"fmt"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/imbridge/imbridge/protocol"
)

// ScopeAdmin is the "scope" claim of an admin token.
const ScopeAdmin = "admin"

// MinSecretLen is the shortest secret accepted, in bytes.
const MinSecretLen = 16

// Errors of verification. They wrap the JWT library's reason.
var (
	ErrInvalidToken = errors.New("auth: invalid token")
	ErrShortSecret  = errors.New("auth: secret shorter than 16 bytes")
	// ErrLifetime is why a token valid for longer than
	// VerifierOptions.MaxLifetime is refused; it comes wrapped in
	// ErrInvalidToken.
	ErrLifetime = errors.New("auth: token lifetime over the maximum")
)

// leeway is the clock skew allowed between the minting and the verifying
// machine.
const leeway = time.Minute

// Claims is what a verified token says.
type Claims struct {
	Subject string    // the user ID, or the admin's name
	Admin   bool      // scope is admin
	Expires time.Time // exp
}

type claims struct {
	Scope string `json:"scope,omitempty"`
	jwt.RegisteredClaims
}

// Verifier checks tokens against one secret.
type Verifier struct {
	secret []byte
	opts   VerifierOptions
	parser *jwt.Parser
}

// VerifierOptions are the optional checks of a Verifier. The zero value adds
// none.
type VerifierOptions struct {
	// Audience, if set, must be one of a token's "aud" values: tokens
	// without it are refused. Empty: "aud" is not checked.
	Audience string
	// MaxLifetime, if positive, refuses tokens valid for longer: "exp" minus
	// "iat" must be at most MaxLifetime, and so must "exp" minus now (plus
	// the minute of clock skew), which covers tokens without "iat" or with
	// one in the future. Zero: no limit. Negative is an error.
	MaxLifetime time.Duration
}

// NewVerifier returns a Verifier for secret, which must be at least
// MinSecretLen bytes, with at most one VerifierOptions (none: no optional
// checks).
func NewVerifier(secret []byte, opts ...VerifierOptions) (*Verifier, error) {
	if len(secret) < MinSecretLen {
		return nil, ErrShortSecret
	}
	var o VerifierOptions
	switch len(opts) {
	case 0:
	case 1:
		o = opts[0]
	default:
		return nil, errors.New("auth: NewVerifier takes at most one VerifierOptions")
	}
	if o.MaxLifetime < 0 {
		return nil, fmt.Errorf("auth: VerifierOptions.MaxLifetime %v is negative", o.MaxLifetime)
	}
	popts := []jwt.ParserOption{
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
		jwt.WithExpirationRequired(),
		jwt.WithLeeway(leeway),
	}
	if o.Audience != "" {
		popts = append(popts, jwt.WithAudience(o.Audience))
	}
	return &Verifier{secret: append([]byte(nil), secret...), opts: o, parser: jwt.NewParser(popts...)}, nil
}

// Verify checks a token's signature, algorithm and expiry and returns its
// claims. A user token's subject must be a valid user ID.
func (v *Verifier) Verify(token string) (Claims, error) {
	var c claims
	_, err := v.parser.ParseWithClaims(token, &c, func(*jwt.Token) (any, error) { return v.secret, nil })
	if err != nil {
		return Claims{}, fmt.Errorf("%w: %w", ErrInvalidToken, err)
	}
	out := Claims{Subject: c.Subject, Admin: c.Scope == ScopeAdmin}
	if c.ExpiresAt != nil {
		out.Expires = c.ExpiresAt.Time
	}
	if limit := v.opts.MaxLifetime; limit > 0 {
		if c.IssuedAt != nil && out.Expires.Sub(c.IssuedAt.Time) > limit {
			return Claims{}, fmt.Errorf("%w: %w: exp-iat is %v, at most %v", ErrInvalidToken, ErrLifetime, out.Expires.Sub(c.IssuedAt.Time), limit)
		}
		if left := time.Until(out.Expires); left > limit+leeway {
			return Claims{}, fmt.Errorf("%w: %w: exp is %v away, at most %v", ErrInvalidToken, ErrLifetime, left.Round(time.Second), limit)
		}
	}
	if !out.Admin && !protocol.ValidUserID(out.Subject) {
		return Claims{}, fmt.Errorf("%w: sub is not a user ID", ErrInvalidToken)
	}
	if out.Admin && out.Subject == "" {
		return Claims{}, fmt.Errorf("%w: admin token without sub", ErrInvalidToken)
	}
	return out, nil
}

// MintOption adds a claim to a token made by Mint or MintAdmin.
type MintOption func(*claims)

// WithAudience sets a minted token's "aud" claim, for a Verifier with
// VerifierOptions.Audience.
func WithAudience(aud string) MintOption {
	return func(c *claims) { c.Audience = jwt.ClaimStrings{aud} }
}

// Mint returns a user token for user, valid for ttl from now.
func Mint(secret []byte, user string, ttl time.Duration, opts ...MintOption) (string, error) {
	if !protocol.ValidUserID(user) {
		return "", fmt.Errorf("auth: %q is not a user ID", user)
	}
	return mint(secret, user, "", ttl, opts)
}

// MintAdmin returns an admin token naming its holder, valid for ttl from now.
func MintAdmin(secret []byte, name string, ttl time.Duration, opts ...MintOption) (string, error) {
	if name == "" {
		return "", errors.New("auth: admin token needs a name")
	}
	return mint(secret, name, ScopeAdmin, ttl, opts)
}

func mint(secret []byte, sub, scope string, ttl time.Duration, opts []MintOption) (string, error) {
	if len(secret) < MinSecretLen {
		return "", ErrShortSecret
	}
	if ttl <= 0 {
		return "", errors.New("auth: ttl must be positive")
	}
	now := time.Now()
	c := claims{Scope: scope, RegisteredClaims: jwt.RegisteredClaims{
		Subject:   sub,
		IssuedAt:  jwt.NewNumericDate(now),
		ExpiresAt: jwt.NewNumericDate(now.Add(ttl)),
	}}
	for _, o := range opts {
		o(&c)
	}
	return jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString(secret)
}
