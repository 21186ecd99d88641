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
