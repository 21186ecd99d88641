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
// clock skew on "exp" and "nbf".
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
)

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
	parser *jwt.Parser
}

// NewVerifier returns a Verifier for secret, which must be at least
// MinSecretLen bytes.
func NewVerifier(secret []byte) (*Verifier, error) {
	if len(secret) < MinSecretLen {
		return nil, ErrShortSecret
	}
	return &Verifier{
		secret: append([]byte(nil), secret...),
		parser: jwt.NewParser(
			jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
			jwt.WithExpirationRequired(),
			jwt.WithLeeway(time.Minute),
		),
	}, nil
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
	if !out.Admin && !protocol.ValidUserID(out.Subject) {
		return Claims{}, fmt.Errorf("%w: sub is not a user ID", ErrInvalidToken)
	}
	if out.Admin && out.Subject == "" {
		return Claims{}, fmt.Errorf("%w: admin token without sub", ErrInvalidToken)
	}
	return out, nil
}

// Mint returns a user token for user, valid for ttl from now.
func Mint(secret []byte, user string, ttl time.Duration) (string, error) {
	if !protocol.ValidUserID(user) {
		return "", fmt.Errorf("auth: %q is not a user ID", user)
	}
	return mint(secret, user, "", ttl)
}

// MintAdmin returns an admin token naming its holder, valid for ttl from now.
func MintAdmin(secret []byte, name string, ttl time.Duration) (string, error) {
	if name == "" {
		return "", errors.New("auth: admin token needs a name")
	}
	return mint(secret, name, ScopeAdmin, ttl)
}

func mint(secret []byte, sub, scope string, ttl time.Duration) (string, error) {
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
	return jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString(secret)
}
