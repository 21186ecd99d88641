package bridge_test

import (
	"testing"
	"time"

	pahopackets "github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/golang-jwt/jwt/v5"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/imbridge/imbridge/auth"
	"github.com/imbridge/imbridge/internal/testdevice"
	"github.com/imbridge/imbridge/internal/testserver"
	"github.com/imbridge/imbridge/protocol"
)

// TestAuthentication: a bad, expired, foreign, admin or missing token is
// refused with CONNACK "not authorized" and gets no session.
func TestAuthentication(t *testing.T) {
	n := testserver.Start(t)
	expired, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.RegisteredClaims{
		Subject: "alice", ExpiresAt: jwt.NewNumericDate(time.Now().Add(-5 * time.Minute)),
	}).SignedString(testserver.Secret)
	forged, _ := auth.Mint([]byte("some-other-secret-0123456789"), "alice", time.Hour)
	for name, password := range map[string]string{
		"wrong password": "not-a-token",
		"bob's token":    n.Token("bob"),
		"admin token":    n.AdminToken(),
		"forged":         forged,
		"expired":        expired,
	} {
		_, err := testdevice.DialV3(t, n.MQTTURL(), "alice", opts{Password: password, ClientID: "victim", Token: n.Token})
		if err == nil {
			t.Errorf("%s: connected", name)
		} else if err.Error() != "connect: "+pahopackets.ErrorRefusedNotAuthorised.Error() {
			t.Errorf("%s: %v, want not authorized", name, err)
		}
	}
	if _, err := testdevice.DialV3(t, n.MQTTURL(), "not/a/user", opts{Token: func(string) string { return n.Token("alice") }}); err == nil {
		t.Error("invalid username connected")
	}
	if got := n.Health().Bridge.AuthFailures; got != 6 {
		t.Errorf("authFailures = %d, want 6", got)
	}
	if got := n.Health().Clients; got != 0 {
		t.Errorf("%d clients connected after refusals", got)
	}
}

// TestNoCrossUserAccess tries every MQTT way for mallory to read or write
// alice's and bob's messages: subscriptions of every form, publishes to their
// topics, a forged from, wills, retained publishes and client-ID takeover.
func TestNoCrossUserAccess(t *testing.T) {
	n := testserver.Start(t)
	alice := v3(t, n, "alice", opts{ClientID: "phone"})
	bob := v3(t, n, "bob", opts{ClientID: "phone"})
	mallory := v3(t, n, "mallory", opts{})

	for _, f := range []string{
		"#", "+/+/+", "users/#", "users/+/inbox", "users/bob/inbox", "users/bob/#", "users/bob/+",
		"users/bob/online", "$share/bob/users/bob/online", "$share/mallory/users/bob/online",
		"$share/x/users/mallory/online", "users/mallory/online", "users/bob/reply", "users/bob/reply/#",
		"users/mallory/send", "users/mallory/#", "$SYS/#", "$share/g/#", "users/bob/send", "users/+/reply/#",
	} {
		if code := mallory.SubscribeV3(f); code != 0x80 {
			t.Errorf("subscribe %q: SUBACK %#x, want 0x80", f, code)
		}
	}
	// Publishes to other users' topics, and to server-only topics of her own
	// (QoS 0: refused silently).
	for _, topic := range []string{"users/bob/inbox", "users/bob/online", "users/bob/reply", "users/alice/send", "users/mallory/inbox", "users/mallory/online", "users/mallory/reply"} {
		mallory.Publish(topic, 0, `{"id":"fake","from":"alice","to":"bob","data":"spoof"}`)
	}
	// A send claiming another sender is sent as mallory.
	mallory.Send(`{"to":"bob","from":"alice","data":"spoof"}`)
	if m := bob.Expect(protocol.InboxTopic("bob")).Message(t); m.From != "mallory" {
		t.Fatalf("from = %q", m.From)
	}
	mallory.Expect(protocol.InboxTopic("mallory"))

	// A retained send is sent, but not retained for later subscribers.
	mallory.PublishRetained(protocol.SendTopic("mallory"), `{"to":"bob","data":"r"}`)
	bob.Expect(protocol.InboxTopic("bob"))
	mallory.Expect(protocol.InboxTopic("mallory"))
	v3(t, n, "mallory", opts{Subscribe: []string{"users/mallory/reply/#", protocol.ReplyTopic("mallory")}}).ExpectQuiet()

	// Client-ID takeover: mallory uses bob's client ID; bob keeps his session.
	thief := v3(t, n, "mallory", opts{ClientID: "phone"})
	alice.Send(`{"to":"bob","data":"private"}`)
	if m := bob.Expect(protocol.InboxTopic("bob")).Message(t); string(m.Data) != `"private"` {
		t.Fatalf("bob got %s", m.Data)
	}
	alice.Expect(protocol.InboxTopic("alice"))
	if !bob.Connected() {
		t.Fatal("bob's connection was taken over")
	}
	thief.ExpectQuiet()

	// Wills aimed at bob's inbox and at mallory's own send topic are
	// discarded when her connection drops.
	for _, will := range []struct{ topic, payload string }{
		{"users/bob/inbox", `{"id":"x","from":"alice","to":"bob","data":"will"}`},
		{"users/mallory/send", `{"to":"bob","data":"will"}`},
	} {
		raw := testdevice.RawConnect(t, n.MQTTAddr(), 4, packets.ConnectParams{
			ClientIdentifier: "willer", Clean: true, Username: []byte("mallory"), Password: []byte(n.Token("mallory")),
			WillFlag: true, WillTopic: will.topic, WillPayload: []byte(will.payload), WillQos: 1,
		})
		raw.Close()
	}
	bob.ExpectQuiet()
	mallory.ExpectQuiet()
	alice.ExpectQuiet()
}
