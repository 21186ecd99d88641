package auth

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

var secret = []byte("0123456789abcdef0123456789abcdef")

func TestMintVerify(t *testing.T) {
	v, err := NewVerifier(secret)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := Mint(secret, "alice", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c, err := v.Verify(tok)
	if err != nil || c.Subject != "alice" || c.Admin || time.Until(c.Expires) < 59*time.Minute {
		t.Fatalf("claims %+v, %v", c, err)
	}
	adm, _ := MintAdmin(secret, "ops", time.Hour)
	if c, err := v.Verify(adm); err != nil || !c.Admin || c.Subject != "ops" {
		t.Fatalf("admin claims %+v, %v", c, err)
	}
}

func TestVerifyRejects(t *testing.T) {
	v, _ := NewVerifier(secret)
	other, _ := Mint([]byte("another-secret-of-32-bytes......."), "alice", time.Hour)
	expired, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.RegisteredClaims{Subject: "alice", ExpiresAt: jwt.NewNumericDate(time.Now().Add(-2 * time.Minute))}).SignedString(secret)
	noExp, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.RegisteredClaims{Subject: "alice"}).SignedString(secret)
	badSub, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.RegisteredClaims{Subject: "a/b", ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Hour))}).SignedString(secret)
	hs512, _ := jwt.NewWithClaims(jwt.SigningMethodHS512, jwt.RegisteredClaims{Subject: "alice", ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Hour))}).SignedString(secret)
	none, _ := jwt.NewWithClaims(jwt.SigningMethodNone, jwt.RegisteredClaims{Subject: "alice", ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Hour))}).SignedString(jwt.UnsafeAllowNoneSignatureType)
	good, _ := Mint(secret, "alice", time.Hour)
	tampered := good[:len(good)-2] + strings.Repeat("A", 2)
	for name, tok := range map[string]string{
		"other secret": other, "expired": expired, "no exp": noExp, "bad sub": badSub,
		"hs512": hs512, "alg none": none, "tampered": tampered, "empty": "", "garbage": "a.b.c",
	} {
		if _, err := v.Verify(tok); !errors.Is(err, ErrInvalidToken) {
			t.Errorf("%s: err = %v, want ErrInvalidToken", name, err)
		}
	}
	if _, err := NewVerifier([]byte("short")); !errors.Is(err, ErrShortSecret) {
		t.Errorf("short secret: %v", err)
	}
	if _, err := Mint(secret, "not valid", time.Hour); err == nil {
		t.Error("minted a token for an invalid user ID")
	}
}

func FuzzVerify(f *testing.F) {
	good, _ := Mint(secret, "alice", time.Hour)
	f.Add(good)
	f.Add("eyJhbGciOiJub25lIn0.e30.")
	v, _ := NewVerifier(secret)
	f.Fuzz(func(t *testing.T, tok string) {
		c, err := v.Verify(tok)
		if err == nil && c.Subject == "" {
			t.Fatal("verified a token without subject")
		}
	})
}

func TestReason(t *testing.T) {
	secret := []byte("0123456789abcdef0123")
	v, err := NewVerifier(secret)
	if err != nil {
		t.Fatal(err)
	}
	good, _ := Mint(secret, "alice", time.Hour)
	other, _ := Mint([]byte("another secret of 20b"), "alice", time.Hour)
	expired, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.RegisteredClaims{Subject: "alice",
		ExpiresAt: jwt.NewNumericDate(time.Now().Add(-time.Hour))}).SignedString(secret)
	noExp, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.RegisteredClaims{Subject: "alice"}).SignedString(secret)
	for _, tc := range []struct{ token, want string }{
		{good, ""},
		{other, "token signature invalid (signed with another secret?)"},
		{expired, "token expired"},
		{noExp, "token lacks a required claim (exp)"},
		{"not.a.jwt", "token malformed"},
		{"", "token malformed"},
	} {
		_, err := v.Verify(tc.token)
		if got := Reason(err); got != tc.want {
			t.Errorf("Reason(Verify(%.20q)) = %q (error %v), want %q", tc.token, got, err, tc.want)
		}
		if strings.Contains(Reason(err), string(secret)) {
			t.Fatal("reason leaks the secret")
		}
	}
}

// TestVerifierOptions: the optional audience and longest lifetime, each
// token against a verifier without options (which accepts them all) and
// with them.
func TestVerifierOptions(t *testing.T) {
	now := time.Now()
	at := func(d time.Duration) *jwt.NumericDate { return jwt.NewNumericDate(now.Add(d)) }
	sign := func(c jwt.RegisteredClaims) string {
		c.Subject = "alice"
		tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString(secret)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	minted, _ := Mint(secret, "alice", time.Hour, WithAudience("chat"))
	mintedOther, _ := Mint(secret, "alice", time.Hour, WithAudience("billing"))
	mintedAdmin, _ := MintAdmin(secret, "ops", time.Hour, WithAudience("chat"))
	mintedLong, _ := Mint(secret, "alice", 48*time.Hour, WithAudience("chat"))
	for _, tc := range []struct {
		name    string
		opts    VerifierOptions
		token   string
		wantErr error // nil: accepted
	}{
		{"aud as required", VerifierOptions{Audience: "chat"}, sign(jwt.RegisteredClaims{Audience: jwt.ClaimStrings{"chat"}, ExpiresAt: at(time.Hour)}), nil},
		{"aud among several", VerifierOptions{Audience: "chat"}, sign(jwt.RegisteredClaims{Audience: jwt.ClaimStrings{"billing", "chat"}, ExpiresAt: at(time.Hour)}), nil},
		{"aud missing", VerifierOptions{Audience: "chat"}, sign(jwt.RegisteredClaims{ExpiresAt: at(time.Hour)}), ErrInvalidToken},
		{"aud another", VerifierOptions{Audience: "chat"}, sign(jwt.RegisteredClaims{Audience: jwt.ClaimStrings{"billing"}, ExpiresAt: at(time.Hour)}), ErrInvalidToken},
		{"aud by Mint", VerifierOptions{Audience: "chat"}, minted, nil},
		{"aud by MintAdmin", VerifierOptions{Audience: "chat"}, mintedAdmin, nil},
		{"another aud by Mint", VerifierOptions{Audience: "chat"}, mintedOther, ErrInvalidToken},
		{"exp-iat within", VerifierOptions{MaxLifetime: 24 * time.Hour}, sign(jwt.RegisteredClaims{IssuedAt: at(-time.Hour), ExpiresAt: at(23 * time.Hour)}), nil},
		{"exp-iat exactly the maximum", VerifierOptions{MaxLifetime: 24 * time.Hour}, sign(jwt.RegisteredClaims{IssuedAt: at(0), ExpiresAt: at(24 * time.Hour)}), nil},
		{"exp-iat over", VerifierOptions{MaxLifetime: 24 * time.Hour}, sign(jwt.RegisteredClaims{IssuedAt: at(-24 * time.Hour), ExpiresAt: at(time.Hour)}), ErrLifetime},
		{"no iat, exp-now within", VerifierOptions{MaxLifetime: 24 * time.Hour}, sign(jwt.RegisteredClaims{ExpiresAt: at(24 * time.Hour)}), nil},
		{"no iat, exp-now over", VerifierOptions{MaxLifetime: 24 * time.Hour}, sign(jwt.RegisteredClaims{ExpiresAt: at(25 * time.Hour)}), ErrLifetime},
		{"iat in the future, exp far", VerifierOptions{MaxLifetime: 24 * time.Hour}, sign(jwt.RegisteredClaims{IssuedAt: at(365 * 24 * time.Hour), ExpiresAt: at(366 * 24 * time.Hour)}), ErrLifetime},
		{"Mint with a longer ttl", VerifierOptions{MaxLifetime: 24 * time.Hour}, mintedLong, ErrLifetime},
		{"both, both met", VerifierOptions{Audience: "chat", MaxLifetime: 2 * time.Hour}, minted, nil},
		{"both, lifetime over", VerifierOptions{Audience: "chat", MaxLifetime: 30 * time.Minute}, minted, ErrLifetime},
	} {
		t.Run(tc.name, func(t *testing.T) {
			plain, _ := NewVerifier(secret)
			if _, err := plain.Verify(tc.token); err != nil {
				t.Fatalf("without options: %v, want accepted", err)
			}
			v, err := NewVerifier(secret, tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			_, err = v.Verify(tc.token)
			if tc.wantErr == nil && err != nil {
				t.Fatalf("with %+v: %v, want accepted", tc.opts, err)
			}
			if tc.wantErr != nil && (!errors.Is(err, tc.wantErr) || !errors.Is(err, ErrInvalidToken)) {
				t.Fatalf("with %+v: %v, want %v", tc.opts, err, tc.wantErr)
			}
		})
	}
	if _, err := NewVerifier(secret, VerifierOptions{MaxLifetime: -time.Second}); err == nil {
		t.Error("negative MaxLifetime accepted")
	}
	if _, err := NewVerifier(secret, VerifierOptions{}, VerifierOptions{}); err == nil {
		t.Error("two VerifierOptions accepted")
	}
}
