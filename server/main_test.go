package server_test

import (
	"os"
	"testing"

	"go.uber.org/goleak"
)

// TestMain checks that every test node and device stops all its goroutines.
// Run as the child of TestAcceptSurvivesDescriptorExhaustion, it is a node
// under a low descriptor limit instead.
func TestMain(m *testing.M) {
	if dir := os.Getenv(fdChildEnv); dir != "" {
		os.Exit(fdChild(dir))
	}
	goleak.VerifyTestMain(m)
}
