// Package server assembles one imbridge node: a mochi-mqtt broker with the
// bridge hook, MQTT listeners over TCP and WebSocket, and the HTTP API.
//
// # Basics
//
// [New] checks a [Config] and does no I/O; [Server.Start] opens the history,
// binds the listeners and serves without blocking; [Server.Shutdown] stops
// the listeners, waits for in-flight sends, flushes the history and closes
// it. An address of "127.0.0.1:0" binds a free port: read the bound one from
// [Server.MQTTAddr], [Server.WSAddr] and [Server.HTTPAddr].
//
// Every MQTT connection runs inside a guard that recovers a panic of the
// broker's packet handling, so that one client's malformed packet closes that
// client and not the process.
//
// # Caveats
//
// Start and Shutdown are called once each, in that order. The accessors are
// safe for concurrent use after Start.
package server
