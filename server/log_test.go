package server

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

func TestDemoteHandler(t *testing.T) {
	var buf bytes.Buffer
	info := slog.New(demoteHandler{slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo})})
	info.Warn("client store quota reached", "client", "a/b")
	info.Warn("error processing packet")
	if out := buf.String(); strings.Contains(out, "quota") || !strings.Contains(out, "error processing packet") {
		t.Fatalf("info log:\n%s", out)
	}
	buf.Reset()
	debug := slog.New(demoteHandler{slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})}).With("component", "mochi")
	debug.Warn("client store quota reached")
	if out := buf.String(); !strings.Contains(out, "level=DEBUG") || !strings.Contains(out, "component=mochi") {
		t.Fatalf("debug log:\n%s", out)
	}
}
