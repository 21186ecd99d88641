package bridge

import (
	"context"
	"errors"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/imbridge/imbridge/protocol"
)

// peer is the bridge as the other nodes see it (Node), for its Router.
type peer struct{ b *Bridge }

// DeliverStored queues the message behind this node's own commits; runFanout
// delivers it to user's sessions here and forwards it nowhere.
func (p peer) DeliverStored(user string, payload []byte) {
	p.b.fanout.put(p.b, fanoutBatch{remote: remoteStored{user: user, payload: payload}}, 1)
}

// DeliverOnline routes the message to the most recently active connected
// device of user here.
func (p peer) DeliverOnline(user string, payload []byte) Outcome {
	id, ok := protocol.PeekMessageID(payload)
	if !ok {
		return Offline
	}
	r, err := p.b.routeOnline(user, string(id), payload)
	switch {
	case err != nil || !r.picked:
		return Offline
	case r.dropped:
		return Dropped
	}
	return Delivered
}

// errTakenOverElsewhere is why a session ends when its client ID connects to
// another node.
var errTakenOverElsewhere = errors.New("session taken over on another node")

// EndSession ends the session clientID, connected or persistent: its device
// connected to another node, which holds the session from now on. An MQTT 5
// device gets DISCONNECT 0x8E (session taken over).
func (p peer) EndSession(clientID string) {
	b := p.b
	cl, ok := b.srv.Clients.Get(clientID)
	if !ok || cl.Net.Inline {
		return
	}
	b.log.Info("session taken over on another node", "client", clientID)
	if !cl.Closed() {
		_ = b.srv.DisconnectClient(cl, packets.ErrSessionTakenOver)
	}
	cl.Stop(errTakenOverElsewhere)
	b.srv.UnsubscribeClient(cl)
	cl.ClearInflights()
	if cur, ok := b.srv.Clients.Get(clientID); ok && cur == cl {
		b.srv.Clients.Delete(clientID)
	}
	b.forget(cl)
}

// Sessions counts user's sessions here, clientID's not included.
func (p peer) Sessions(user, clientID string) int {
	n := p.b.sessions.count(user)
	if _, ok := p.b.devices.Load(clientID); ok {
		n--
	}
	return n
}

// otherSessions counts user's sessions on the other nodes, not clientID's.
// When the other nodes cannot be asked it counts none, and logs why: the
// device limit then holds per node.
func (b *Bridge) otherSessions(user, clientID string) int {
	ctx, cancel := context.WithTimeout(context.Background(), routeTimeout)
	defer cancel()
	n, err := b.router.Sessions(ctx, user, clientID)
	if err != nil {
		b.logs.info("sessions on other nodes not counted", "user", user, "error", err)
	}
	return n
}

// connectedDevice counts cl's device as connected, once.
func (b *Bridge) connectedDevice(cl *mqtt.Client, d *device) {
	if d.counted.CompareAndSwap(false, true) {
		b.sessions.connected(userOf(cl), 1)
	}
}

// disconnectedDevice counts d, user's device, as disconnected, once.
func (b *Bridge) disconnectedDevice(user string, d *device) {
	if d.counted.CompareAndSwap(true, false) {
		b.sessions.connected(user, -1)
	}
}
