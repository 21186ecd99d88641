package bridge_test

import (
	"log"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"

	"github.com/imbridge/imbridge/bridge"
)

// Attach imbridge's messaging rules to a mochi server of your own. (Package
// server does this, with imbridge's broker settings and guarded listeners.)
func ExampleOpen() {
	srv := mqtt.New(&mqtt.Options{InlineClient: true})
	b, err := bridge.Open(srv, bridge.Config{
		DBPath: "history.db",
		Secret: []byte("at-least-16-bytes-of-secret"),
	})
	if err != nil {
		log.Fatal(err)
	}
	if err := srv.AddListener(listeners.NewTCP(listeners.Config{ID: "tcp", Address: ":1883"})); err != nil {
		log.Fatal(err)
	}
	if err := srv.Serve(); err != nil {
		log.Fatal(err)
	}
	// ... on shutdown: first the broker, then the bridge.
	srv.Close()
	b.Close()
}
