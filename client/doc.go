// Package client is imbridge's Go device SDK, on paho.mqtt.golang: connect,
// send, receive, page through history and show "… is typing", with the
// messaging rules of docs/protocol.md handled for you.
//
// # Basics
//
// [Dial] connects with a user ID and token, subscribes to the user's topics
// and returns once it can send. It reconnects on its own with exponential
// backoff (paho's), subscribes again, and after every connect catches up
// from the server's history, so that [Config.OnMessage] sees every stored
// message exactly once and in inboxSeq order — across reconnects and server
// restarts, with clean or persistent sessions. Keep [Client.InboxSeq] (and
// [Client.Epoch]) to resume from there after the app restarts.
//
// [Client.SendMessage] sends a stored or an online-only message and returns
// the server's receipt: stored (id, seq, time), delivered, or offline; or an
// [*Error]. If the connection drops while it waits, it sends again with the
// same id once reconnected; the server answers a retry without sending twice.
//
// [Client.Typist] and [Config.OnTyping] implement the typing indicator on
// online-only {"command":"textInput"} messages: the sender side throttles,
// the receiver side expires the state on its own.
//
// Every request waits [Config.RequestTimeout] for its answer and is sent
// again ([Config.RequestRetries]), so nothing waits for ever on an answer
// the server dropped; the catch-up keeps sending sync requests until it is
// through. A message or answer the client cannot decode is counted
// ([Client.Stats]) and reported ([Config.OnError], or the error of the call
// that waited for it); a stored one keeps its place in inboxSeq order, so
// the messages after it still arrive.
//
// Messages sent without [SendOptions.ID] get an id that never repeats (an
// xid), across devices and app restarts.
//
// # Caveats
//
// Callbacks run one at a time on one goroutine of the client, in order; a
// slow callback delays later ones, not the network. Online-only messages are
// never kept by the client: a device that was offline never sees them.
// The client holds a goroutine for the dispatcher and paho's, one per
// running catch-up, and one per Typist only while it sends; Close ends
// them (paho's connect attempt, if Dial was cancelled, within
// ConnectTimeout).
// All methods are safe for concurrent use.
package client
