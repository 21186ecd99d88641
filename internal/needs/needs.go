// Package needs lets a test require an outside tool or file: it skips with
// a clear message where the tool is missing, but fails under CI (CI=true),
// whose .ci/run installs everything, so that nothing skips there unseen.
package needs

import (
	"os"
	"os/exec"
	"testing"
)

// Tool returns the path of the first of names found on PATH. If none is,
// the test is skipped (or, under CI, failed) with the hint on how to
// install it.
func Tool(t testing.TB, hint string, names ...string) string {
	t.Helper()
	for _, name := range names {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	missing(t, names[0]+" not installed ("+hint+")")
	return ""
}

// File requires a file, such as an npm package installed by npm ci.
func File(t testing.TB, hint, path string) {
	t.Helper()
	if _, err := os.Stat(path); err != nil {
		missing(t, path+" missing ("+hint+")")
	}
}

func missing(t testing.TB, why string) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatal(why + "; .ci/run should have installed it")
	}
	t.Skip(why + "; .ci/run installs it")
}
