package client_test

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/imbridge/imbridge/auth"
	"github.com/imbridge/imbridge/client"
	"github.com/imbridge/imbridge/protocol"
	"github.com/imbridge/imbridge/server"
)

var exampleSecret = []byte("example-secret-0123456789")

// startNode runs an imbridge node in this process for the examples; a real
// app connects to a running mqttd instead.
func startNode() (broker string, stop func()) {
	dir, _ := os.MkdirTemp("", "imbridge-example")
	srv, err := server.New(server.Config{MQTTAddr: "127.0.0.1:0", DataDir: dir, Secret: exampleSecret})
	if err == nil {
		err = srv.Start()
	}
	if err != nil {
		panic(err)
	}
	return "tcp://" + srv.MQTTAddr(), func() {
		srv.Shutdown(context.Background())
		os.RemoveAll(dir)
	}
}

// token stands in for the app server that mints tokens.
func token(user string) string {
	t, _ := auth.Mint(exampleSecret, user, time.Hour)
	return t
}

// Connect, send a stored message, and receive it on another user's device.
func Example() {
	broker, stop := startNode()
	defer stop()
	ctx := context.Background()

	got := make(chan protocol.Message, 1)
	bob, err := client.Dial(ctx, client.Config{
		Broker: broker, User: "bob", Token: token("bob"),
		OnMessage: func(m protocol.Message) { got <- m },
	})
	if err != nil {
		panic(err)
	}
	defer bob.Close()

	alice, err := client.Dial(ctx, client.Config{Broker: broker, User: "alice", Token: token("alice")})
	if err != nil {
		panic(err)
	}
	defer alice.Close()

	receipt, err := alice.SendMessage(ctx, "bob", map[string]string{"text": "hi bob"}, client.SendOptions{})
	if err != nil {
		panic(err)
	}
	fmt.Println("alice's receipt:", receipt.Status, "seq", receipt.Seq)

	m := <-got
	fmt.Printf("bob got %s from %s (seq %d, online-only %v)\n", m.Data, m.From, m.Seq, m.OnlineUserOnly)
	// Output:
	// alice's receipt: stored seq 1
	// bob got {"text":"hi bob"} from alice (seq 1, online-only false)
}

// An online-only message reaches one connected device of the receiver, or
// nobody; the receipt says which.
func ExampleClient_SendMessage_onlineOnly() {
	broker, stop := startNode()
	defer stop()
	ctx := context.Background()
	alice, err := client.Dial(ctx, client.Config{Broker: broker, User: "alice", Token: token("alice")})
	if err != nil {
		panic(err)
	}
	defer alice.Close()

	r, _ := alice.SendMessage(ctx, "bob", map[string]string{"command": "textInput"}, client.SendOptions{OnlineUserOnly: true})
	fmt.Println(r.Status) // bob has no device connected
	// Output: offline
}

// The typing indicator: Keystroke on every key press (throttled), and
// OnTyping on the other side (expires on its own).
func ExampleClient_Typist() {
	broker, stop := startNode()
	defer stop()
	ctx := context.Background()

	events := make(chan string, 2)
	bob, err := client.Dial(ctx, client.Config{
		Broker: broker, User: "bob", Token: token("bob"),
		TypingTimeout: 100 * time.Millisecond,
		OnTyping:      func(peer string, typing bool) { events <- fmt.Sprint(peer, " typing: ", typing) },
	})
	if err != nil {
		panic(err)
	}
	defer bob.Close()
	alice, err := client.Dial(ctx, client.Config{Broker: broker, User: "alice", Token: token("alice")})
	if err != nil {
		panic(err)
	}
	defer alice.Close()

	typist := alice.Typist("bob")
	for range 10 {
		typist.Keystroke() // one indicator goes out for all ten
	}
	fmt.Println(<-events)
	fmt.Println(<-events) // no update for TypingTimeout
	// Output:
	// alice typing: true
	// alice typing: false
}
