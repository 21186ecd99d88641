package bridge

import "errors"

// Errors of Open.
var (
	ErrNoInlineClient = errors.New("bridge: the mochi server needs Options.InlineClient = true")
	ErrNoDBPath       = errors.New("bridge: Config.DBPath or Config.OpenStore is required")
)
