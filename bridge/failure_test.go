package bridge_test

import (
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/imbridge/imbridge/internal/testdevice"
	"github.com/imbridge/imbridge/internal/testserver"
	"github.com/imbridge/imbridge/protocol"
)

// TestStoreFailureIsNeverAcknowledged closes the history under a running
// node: an MQTT 5 sender gets PUBACK 0x80 and an error receipt, an MQTT 3.1.1
// sender gets no PUBACK (its connection is closed, so it resends later), an
// HTTP sender gets 503. Online-only messages, which need no store, still go.
func TestStoreFailureIsNeverAcknowledged(t *testing.T) {
	n := testserver.Start(t)
	a5 := v5(t, n, "alice", opts{})
	a3 := v3(t, n, "alice", opts{}) // another device of alice: gets no receipt of a5's send
	bob := v3(t, n, "bob", opts{})
	if err := n.Bridge().Close(); err != nil {
		t.Fatal(err)
	}

	if code := a5.PublishV5(protocol.SendTopic("alice"), 1, `{"to":"bob","data":1,"id":"f5"}`, nil); code != 0x80 {
		t.Fatalf("MQTT 5 PUBACK %#x, want 0x80", code)
	}
	r := a5.Expect(protocol.ReplyTopic("alice")).Receipt(t)
	if r.Status != protocol.StatusError || r.Error.Code != protocol.CodeUnavailable || r.ID != "f5" {
		t.Fatalf("receipt %+v", r)
	}
	a3.ExpectQuiet()

	c, lost := rawV3Client(t, n, "alice")
	tok := c.Publish(protocol.SendTopic("alice"), 1, false, `{"to":"bob","data":2}`)
	select {
	case <-lost:
	case <-time.After(testdevice.Wait):
		t.Fatal("MQTT 3.1.1 connection not closed after a failed store")
	}
	if tok.WaitTimeout(0) && tok.Error() == nil {
		t.Fatal("MQTT 3.1.1 send was acknowledged though the store is closed")
	}

	if code, r := httpSend(t, n, n.Token("alice"), `{"to":"bob","data":3}`); code != 503 || r.Error.Code != protocol.CodeUnavailable {
		t.Fatalf("HTTP send: %d %+v", code, r)
	}
	a5.Send(`{"to":"bob","data":"typing","onlineUserOnly":true}`)
	bob.Expect(protocol.OnlineTopic("bob"))
	bob.ExpectQuiet()
}

// rawV3Client connects an MQTT 3.1.1 client whose publishes the test
// inspects itself; lost is closed when the server drops the connection.
func rawV3Client(t *testing.T, n *testserver.Node, user string) (c paho.Client, lost chan struct{}) {
	t.Helper()
	lost = make(chan struct{})
	c = paho.NewClient(paho.NewClientOptions().AddBroker(n.MQTTURL()).SetClientID("raw3").
		SetUsername(user).SetPassword(n.Token(user)).SetAutoReconnect(false).SetCleanSession(false).
		SetConnectionLostHandler(func(paho.Client, error) { close(lost) }))
	if tok := c.Connect(); !tok.WaitTimeout(testdevice.Wait) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(0) })
	return c, lost
}
