// Command typing is the "the other side is typing…" demo over plain MQTT
// (paho, no imbridge SDK): run it once as the typist and once as the reader.
//
//	go run ./mqttd &                                      # the server
//	go run ./examples/typing -user bob -peer alice         # bob reads
//	go run ./examples/typing -user alice -peer bob -type   # alice types
//
// The typist sends {"command":"textInput"} as an online-only message at most
// once every 2 seconds while keys are pressed, and each finished line as a
// normal (stored) message. The reader shows "alice is typing…" and clears it
// when no update came for 4 seconds, or when her message arrives.
//
// Tokens are minted with the server's secret (./data/secret by default), as an
// app server would; pass -token to use one you have.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"golang.org/x/term"

	"github.com/imbridge/imbridge/auth"
	"github.com/imbridge/imbridge/protocol"
)

// typingEvery is how often, at most, the typist sends the indicator.
const typingEvery = 2 * time.Second

func main() {
	broker := flag.String("broker", "tcp://127.0.0.1:1883", "MQTT broker URL (tcp:// or ws://)")
	user := flag.String("user", "", "your user ID")
	peer := flag.String("peer", "", "the user ID you chat with")
	typist := flag.Bool("type", false, "type (send) instead of read")
	token := flag.String("token", "", "token; default: minted with the secret in -data")
	data := flag.String("data", "./data", "mqttd's data directory, for its secret")
	expire := flag.Duration("expire", 4*time.Second, "reader: clear the indicator after this long without an update")
	flag.Parse()
	if !protocol.ValidUserID(*user) || !protocol.ValidUserID(*peer) {
		fmt.Fprintln(os.Stderr, "typing: -user and -peer must be user IDs")
		os.Exit(2)
	}
	if *token == "" {
		secret, err := os.ReadFile(*data + "/secret")
		if err != nil {
			fmt.Fprintln(os.Stderr, "typing: no -token and no secret:", err)
			os.Exit(2)
		}
		if *token, err = auth.Mint([]byte(strings.TrimSpace(string(secret))), *user, time.Hour); err != nil {
			fmt.Fprintln(os.Stderr, "typing:", err)
			os.Exit(2)
		}
	}
	c := paho.NewClient(paho.NewClientOptions().AddBroker(*broker).SetClientID("typing-demo-" + fmt.Sprint(os.Getpid())).
		SetUsername(*user).SetPassword(*token).SetCleanSession(true))
	if tok := c.Connect(); tok.Wait() && tok.Error() != nil {
		fmt.Fprintln(os.Stderr, "typing: connect:", tok.Error())
		os.Exit(1)
	}
	defer c.Disconnect(250)
	if *typist {
		typeTo(c, *user, *peer)
	} else {
		read(c, *user, *peer, *expire)
	}
}

// typeTo reads keys (raw mode on a terminal, lines otherwise) and sends.
func typeTo(c paho.Client, user, peer string) {
	send := func(online bool, data any) {
		b, _ := json.Marshal(protocol.SendRequest{To: peer, OnlineUserOnly: online, Data: mustJSON(data)})
		c.Publish(protocol.SendTopic(user), 1, false, b).Wait()
	}
	var last time.Time
	keystroke := func() {
		if time.Since(last) >= typingEvery {
			send(true, map[string]string{"command": "textInput"})
			last = time.Now()
		}
	}
	fmt.Printf("typing to %s; Enter sends, Ctrl-C quits\r\n", peer)
	if !term.IsTerminal(int(os.Stdin.Fd())) {
		// Piped input: each line is typed, then sent; a last line without a
		// newline is typed but never sent.
		r := bufio.NewReader(os.Stdin)
		for {
			line, err := r.ReadString('\n')
			if line != "" {
				keystroke()
			}
			if err != nil {
				return
			}
			send(false, map[string]string{"text": strings.TrimSuffix(line, "\n")})
			last = time.Time{}
		}
	}
	old, err := term.MakeRaw(int(os.Stdin.Fd()))
	if err != nil {
		fmt.Fprintln(os.Stderr, "typing:", err)
		return
	}
	defer term.Restore(int(os.Stdin.Fd()), old)
	var line []byte
	buf := make([]byte, 1)
	for {
		if _, err := os.Stdin.Read(buf); err != nil || buf[0] == 3 || buf[0] == 4 { // Ctrl-C, Ctrl-D
			return
		}
		switch buf[0] {
		case '\r', '\n':
			if len(line) > 0 {
				send(false, map[string]string{"text": string(line)})
			}
			line, last = line[:0], time.Time{}
			fmt.Print("\r\n")
		case 127, 8:
			if len(line) > 0 {
				line = line[:len(line)-1]
				fmt.Print("\b \b")
			}
			keystroke()
		default:
			line = append(line, buf[0])
			os.Stdout.Write(buf)
			keystroke()
		}
	}
}

// read shows peer's typing state and messages.
func read(c paho.Client, user, peer string, typingExpiry time.Duration) {
	events := make(chan protocol.Message, 16)
	handler := func(_ paho.Client, m paho.Message) {
		var msg protocol.Message
		if json.Unmarshal(m.Payload(), &msg) == nil && msg.From == peer {
			events <- msg
		}
	}
	for _, f := range []string{protocol.InboxTopic(user), protocol.OnlineFilter(user)} {
		if tok := c.Subscribe(f, 1, handler); tok.Wait() && tok.Error() != nil {
			fmt.Fprintln(os.Stderr, "typing: subscribe:", tok.Error())
			return
		}
	}
	fmt.Printf("waiting for %s…\n", peer)
	expiry := time.NewTimer(time.Hour)
	expiry.Stop()
	typing := false
	var lastMessage int64 // server time of peer's last stored message
	show := func(on bool) {
		if on != typing {
			typing = on
			if on {
				fmt.Printf("%s is typing…\n", peer)
			} else {
				fmt.Printf("(%s stopped typing)\n", peer)
			}
		}
	}
	for {
		select {
		case m := <-events:
			var cmd struct{ Command, Text string }
			json.Unmarshal(m.Data, &cmd)
			if m.OnlineUserOnly && cmd.Command == "textInput" {
				if m.Time <= lastMessage {
					continue // sent before the message that already arrived
				}
				show(true)
				expiry.Reset(typingExpiry)
				continue
			}
			expiry.Stop()
			typing = false
			lastMessage = max(lastMessage, m.Time)
			fmt.Printf("%s: %s\n", peer, cmd.Text)
		case <-expiry.C:
			show(false)
		}
	}
}

func mustJSON(v any) json.RawMessage {
	b, _ := json.Marshal(v)
	return b
}
