// Package bridge holds imbridge's messaging rules as a mochi-mqtt hook:
// authentication, topic ACL, routing of send requests, the choice of the one
// device that gets an online-only message, receipts, and history queries over
// MQTT and HTTP.
//
// # Basics
//
// [Open] opens the history file, attaches the bridge to a mochi server (which
// must have Options.InlineClient set) and returns it; start the server after.
// [Bridge.Handler] serves the HTTP API. [Bridge.Close] flushes the history
// and stops the fan-out; call it after the mochi server has stopped.
//
// A device authenticates with username = user ID and password = token (see
// package auth). Its MQTT client ID is put in the user's namespace
// ("alice/phone"), so no user can take over another user's session. It may
// publish only to its own send, history and sync topics, and subscribe only to
// its own inbox, reply topics and the shared online filter. Wills are
// discarded and retained publishes are not retained.
//
// A normal send is stored (fsynced, group-committed) before the sender's
// PUBACK and then fanned out, in seq order, to users/TO/inbox and
// users/FROM/inbox at QoS 1. An online-only send is published at QoS 0 to
// users/TO/online and reaches, through the shared subscription, the most
// recently active connected device of the receiver, or nobody.
//
// # Caveats
//
// The hook's methods run on mochi's client goroutines; a send blocks its
// client's read loop until the store has committed it. All exported methods are
// safe for concurrent use.
package bridge
