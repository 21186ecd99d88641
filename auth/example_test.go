package auth_test

import (
	"fmt"
	"time"

	"github.com/imbridge/imbridge/auth"
)

// An app server mints a token for a user; mqttd verifies it at CONNECT.
func ExampleMint() {
	secret := []byte("the-secret-shared-with-mqttd")
	token, _ := auth.Mint(secret, "alice", 24*time.Hour)

	v, _ := auth.NewVerifier(secret)
	claims, err := v.Verify(token)
	fmt.Println(claims.Subject, claims.Admin, err)
	// Output: alice false <nil>
}
