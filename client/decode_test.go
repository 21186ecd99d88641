package client

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/imbridge/imbridge/protocol"
)

// tooDeep is data that encoding/json refuses inside a message: nested
// beyond its 10,000 levels.
var tooDeep = strings.Repeat("[", 10000) + strings.Repeat("]", 10000)

func msgJSON(seq int, data string) string {
	return fmt.Sprintf(`{"id":"m%d","from":"alice","to":"bob","onlineUserOnly":false,"time":1,"data":%s,"seq":%d,"inboxSeq":%d}`, seq, data, seq, seq)
}

// syncPage has good messages 1 and 4 around two the client cannot decode:
// 2 has a field of the wrong type, 3 data nested too deep.
var syncPage = `{"type":"sync","id":"r1","messages":[` + strings.Join([]string{
	msgJSON(1, `"one"`),
	strings.Replace(msgJSON(2, `"two"`), `"time":1`, `"time":"soon"`, 1),
	msgJSON(3, tooDeep),
	msgJSON(4, `{"text":"four \"quoted\" ]}"}`),
}, ",") + `],"epoch":"e1","more":true,"nextAfter":4}`

func TestDecodePageKeepsTheGoodMessages(t *testing.T) {
	var whole protocol.Page
	if err := json.Unmarshal([]byte(syncPage), &whole); err == nil {
		t.Fatal("encoding/json decodes the whole page: the test page is not poisoned")
	}
	p, bad, err := decodePage("users/bob/reply", []byte(syncPage))
	if err != nil {
		t.Fatal(err)
	}
	if p.Type != "sync" || p.ID != "r1" || p.Epoch != "e1" || !p.More || p.NextAfter != 4 {
		t.Fatalf("page fields %+v", p)
	}
	if len(p.Messages) != 2 || p.Messages[0].InboxSeq != 1 || p.Messages[1].InboxSeq != 4 || string(p.Messages[1].Data) != `{"text":"four \"quoted\" ]}"}` {
		t.Fatalf("good messages %+v", p.Messages)
	}
	if len(bad) != 2 || bad[0].InboxSeq != 2 || bad[1].InboxSeq != 3 || bad[1].MsgID != "m3" || !errors.Is(bad[0], ErrUndecodable) {
		t.Fatalf("bad %+v", bad)
	}
	if id := replyID([]byte(syncPage)); id != "r1" {
		t.Fatalf("replyID %q", id)
	}
}

// TestUndecodableStoredMessageKeepsItsPlace: the sequencer passes a stored
// message it cannot decode to OnError in its place, moves the cursor past
// it, and goes on with the next.
func TestUndecodableStoredMessageKeepsItsPlace(t *testing.T) {
	var got []string // written by the dispatcher goroutine, read after stop
	c := &Client{run: newDispatcher(), ahead: map[uint64]entry{}, watching: map[string]*peerTyping{}}
	c.cfg = Config{
		MaxAhead:  10,
		OnMessage: func(m protocol.Message) { got = append(got, fmt.Sprint("message ", m.InboxSeq)) },
		OnError: func(err error) {
			var d *DecodeError
			if errors.As(err, &d) {
				got = append(got, fmt.Sprint("error ", d.InboxSeq))
			}
		},
	}.withDefaults()
	c.log = c.cfg.Logger
	p, bad, err := decodePage("users/bob/reply", []byte(syncPage))
	if err != nil {
		t.Fatal(err)
	}
	entries := merge(p.Messages, bad)
	c.acceptStored(entries[3]) // 4 arrives live first, beyond the hole
	for _, e := range entries {
		c.acceptSynced(e)
	}
	c.run.stop()
	want := []string{"message 1", "error 2", "error 3", "message 4"}
	if !reflect.DeepEqual(got, want) || c.cursor != 4 || c.Stats().Undecodable != 2 {
		t.Fatalf("got %q, cursor %d, %+v; want %q", got, c.cursor, c.Stats(), want)
	}
}

// FuzzDecodePage: decodePage never panics, and on a page encoding/json
// decodes it returns the same page with nothing bad.
func FuzzDecodePage(f *testing.F) {
	f.Add(syncPage)
	f.Add(`{"type":"history","messages":[],"more":false}`)
	f.Add(`{"messages":null}`)
	f.Add(`{"id":"x","error":{"code":"bad_json","message":"m"}}`)
	f.Add(`{"messages":[` + msgJSON(1, `[1,"]",{"a":"\\"}]`) + `]}`)
	f.Fuzz(func(t *testing.T, s string) {
		p, bad, err := decodePage("t", []byte(s))
		var want protocol.Page
		if json.Unmarshal([]byte(s), &want) != nil || strings.Count(s, `"messages"`) > 1 {
			return
		}
		if err != nil || len(bad) != 0 {
			t.Fatalf("encoding/json decodes %q; decodePage: %v, bad %v", s, err, bad)
		}
		if len(want.Messages) == 0 {
			want.Messages = nil
		}
		if !reflect.DeepEqual(normal(p), normal(want)) {
			t.Fatalf("decodePage %+v, encoding/json %+v", p, want)
		}
	})
}

// normal compacts the data of p's messages, which encoding/json keeps as
// written.
func normal(p protocol.Page) protocol.Page {
	for i, m := range p.Messages {
		var b strings.Builder
		_ = json.NewEncoder(&b).Encode(m.Data)
		p.Messages[i].Data = json.RawMessage(strings.TrimSpace(b.String()))
	}
	return p
}
