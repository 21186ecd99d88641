package server

import (
	"context"
	"log/slog"
)

// perMessage lists mochi's log messages that are written once per delivered
// message (and so flood the log under load); they are demoted to debug.
var perMessage = map[string]bool{
	"client store quota reached": true, // a QoS 1 delivery dropped: session inflight full
	"packet ids exhausted":       true,
}

// demoteHandler passes records to h, demoting mochi's per-message warnings
// to debug so that info logs stay one line per connection event.
type demoteHandler struct{ h slog.Handler }

func (d demoteHandler) Enabled(ctx context.Context, l slog.Level) bool { return d.h.Enabled(ctx, l) }

func (d demoteHandler) Handle(ctx context.Context, r slog.Record) error {
	if perMessage[r.Message] {
		if !d.h.Enabled(ctx, slog.LevelDebug) {
			return nil
		}
		r.Level = slog.LevelDebug
	}
	return d.h.Handle(ctx, r)
}

func (d demoteHandler) WithAttrs(a []slog.Attr) slog.Handler { return demoteHandler{d.h.WithAttrs(a)} }
func (d demoteHandler) WithGroup(g string) slog.Handler      { return demoteHandler{d.h.WithGroup(g)} }
