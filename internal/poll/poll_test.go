package poll

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

func TestWait(t *testing.T) {
	n := 0
	if err := Wait(Total, time.Millisecond, func() error {
		if n++; n < 3 {
			return fmt.Errorf("n = %d", n)
		}
		return nil
	}); err != nil || n != 3 {
		t.Fatalf("Wait: %v after %d checks, want nil after 3", err, n)
	}
	start := time.Now()
	errNot := errors.New("not yet")
	if err := Wait(20*time.Millisecond, time.Millisecond, func() error { return errNot }); err != errNot {
		t.Fatalf("Wait on a condition that never holds: %v, want its last error", err)
	}
	if d := time.Since(start); d < 20*time.Millisecond {
		t.Fatalf("Wait gave up after %v, before its total", d)
	}
}
