package bridge

import (
	"context"
	"errors"
	"time"
)

// Router carries what crosses between the nodes of a cluster: stored
// messages for devices on other nodes, online-only messages for a user
// with no connected device here, session takeovers and session counts.
// Within a node, devices are reached through mochi; a single node uses
// Alone, for which nothing crosses. package cluster implements Router over
// NATS.
//
// A Router's methods are called concurrently and must not block for long;
// Online and Sessions wait for other nodes, bounded by their context.
type Router interface {
	// Start begins answering the other nodes through node. It is called once,
	// by Open, before the bridge serves any device.
	Start(node Node) error
	// Watch says that this node now holds (on) or no longer holds (off) what
	// makes it interested in user's traffic: for Sessions, any session of
	// user, connected or persistent; for Connected, a connected device whose
	// CONNACK was written. Calls for one user and interest alternate on and
	// off, starting with on.
	Watch(user string, what Interest, on bool)
	// Stored hands a committed message, encoded with user's inboxSeq, to the
	// other nodes that hold sessions of user.
	Stored(user string, payload []byte)
	// Online asks one other node with a connected device of user to deliver
	// the encoded online-only message. It returns ErrNoDevice when no node
	// has one.
	Online(ctx context.Context, user string, payload []byte) (Outcome, error)
	// Takeover tells the other nodes that clientID (user's) connected here:
	// a session with that client ID elsewhere ends.
	Takeover(user, clientID string)
	// Sessions counts user's sessions on the other nodes, not counting
	// clientID.
	Sessions(ctx context.Context, user, clientID string) (int, error)
	// Close stops answering and leaves the cluster.
	Close() error
}

// Interest is what makes a node take part in a user's traffic; see
// Router.Watch.
type Interest int

const (
	Sessions  Interest = iota // any session of the user: stored messages, takeovers, counts
	Connected                 // a connected device of the user: online-only messages
)

// Outcome is what happened to an online-only message on the node that
// routed it.
type Outcome int

const (
	Delivered Outcome = iota // handed to a connected device's write queue
	Dropped                  // the picked device's write queue was full
	Offline                  // no connected device
)

// ErrNoDevice is Router.Online's answer when no other node has a connected
// device of the user.
var ErrNoDevice = errors.New("bridge: no connected device on another node")

// Node is what a bridge does for the other nodes, called by its Router.
type Node interface {
	// DeliverStored delivers a stored message, encoded with user's
	// inboxSeq, to this node's sessions of user, after what is already
	// queued for delivery.
	DeliverStored(user string, payload []byte)
	// DeliverOnline routes an encoded online-only message to one connected
	// device of user on this node.
	DeliverOnline(user string, payload []byte) Outcome
	// EndSession ends the session clientID on this node, if there is one:
	// its device connected to another node.
	EndSession(clientID string)
	// Sessions counts user's sessions on this node, not counting clientID.
	Sessions(user, clientID string) int
}

// Alone is the Router of a single node: there are no other nodes.
type Alone struct{}

func (Alone) Start(Node) error                                      { return nil }
func (Alone) Watch(string, Interest, bool)                          {}
func (Alone) Stored(string, []byte)                                 {}
func (Alone) Takeover(string, string)                               {}
func (Alone) Close() error                                          { return nil }
func (Alone) Sessions(context.Context, string, string) (int, error) { return 0, nil }
func (Alone) Online(context.Context, string, []byte) (Outcome, error) {
	return Offline, ErrNoDevice
}

// routeTimeout bounds a request to other nodes: an online-only message, or a
// count of sessions.
const routeTimeout = time.Second
