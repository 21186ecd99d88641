package bridge_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain checks that every test node and device stops all its goroutines.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
