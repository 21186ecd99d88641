// Package protocol defines imbridge's wire protocol: user IDs, the per-user
// MQTT topics, and the JSON documents that devices, the server and scripts
// exchange. It is shared by the server, the client SDK and the examples, and
// imports nothing of the broker.
//
// # Basics
//
// A user U owns the topics built by [SendTopic], [InboxTopic], [OnlineTopic],
// [ReplyTopic], [HistoryTopic] and [SyncTopic]; [ParseTopic] is their inverse.
// Devices publish a [SendRequest] to the send topic; the server delivers a
// [Message] to the inbox topic (stored messages) or the online topic (online-only
// messages), and answers with a [Receipt] or a [Page] on the reply topic.
//
// docs/protocol.md is the normative description; this package is its Go form.
//
// # Caveats
//
// Decoders copy what they keep, so callers may reuse their input buffers.
// All functions are safe for concurrent use; the types are plain values.
package protocol
