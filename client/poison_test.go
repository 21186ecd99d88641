package client_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/imbridge/imbridge/client"
	"github.com/imbridge/imbridge/internal/testserver"
	"github.com/imbridge/imbridge/protocol"
	"github.com/imbridge/imbridge/server"
	"github.com/imbridge/imbridge/storage"
)

// Poison data a broken or hostile device may have had stored.
var (
	deepData    = strings.Repeat("[", 9999) + strings.Repeat("]", 9999)
	invalidUTF8 = "\"\xff\xfe bad\""
)

// storeDirectly appends alice -> bob messages with the given data to the
// history in dir, through the storage package: the server may refuse such
// data on send, and the test must not depend on whether it does.
func storeDirectly(t *testing.T, dir string, data ...string) {
	t.Helper()
	st, err := storage.OpenBolt(filepath.Join(dir, "history.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for i, d := range data {
		m := protocol.Message{ID: fmt.Sprintf("stored-%d", i), From: "alice", To: "bob", Time: time.Now().UnixMilli(), Data: json.RawMessage(d)}
		if _, err := st.Append(t.Context(), m); err != nil {
			t.Fatal(err)
		}
	}
}

// TestPoisonInTheHistory: stored messages with data nested 9,999 deep and
// with invalid UTF-8 do not stop the good ones around them: the catch-up
// passes all in inboxSeq order, and History answers.
func TestPoisonInTheHistory(t *testing.T) {
	dir := t.TempDir()
	storeDirectly(t, dir, `"one"`, deepData, invalidUTF8, `"four"`)
	n := testserver.Start(t, func(c *server.Config) { c.DataDir = dir })
	bobApp := newApp()
	errs := make(chan error, 10)
	bob := dial(t, n, "bob", bobApp, func(c *client.Config) {
		c.RequestTimeout = time.Second
		c.OnError = func(err error) { errs <- err }
	})
	got := bobApp.stored(t, 0, 4)
	if string(got[0].Data) != `"one"` || string(got[3].Data) != `"four"` {
		t.Fatalf("first %s, last %s", got[0].Data, got[3].Data)
	}
	httpSend(t, n, n.AdminToken(), 5)
	bobApp.stored(t, 4, 1)

	p, err := bob.History(t.Context(), "alice", client.HistoryOptions{})
	if err != nil || len(p.Messages) != 5 {
		t.Fatalf("History: %d messages, %v", len(p.Messages), err)
	}
	select {
	case err := <-errs:
		t.Fatalf("OnError(%v) for messages the client could decode", err)
	default:
	}
}

// TestPoisonLive: a device sends poison data; if the server accepts it, the
// receiver gets it or a report of it in its place, and the messages after
// it, in order.
func TestPoisonLive(t *testing.T) {
	n := testserver.Start(t)
	bobApp := newApp()
	dial(t, n, "bob", bobApp, func(c *client.Config) { c.RequestTimeout = time.Second })
	alice := dial(t, n, "alice", newApp())
	var want []string
	for _, d := range []string{`"one"`, deepData, invalidUTF8, `"four"`} {
		_, err := alice.SendMessage(t.Context(), "bob", json.RawMessage(d), client.SendOptions{})
		var refused *client.Error
		switch {
		case errors.As(err, &refused):
			continue // the server refuses poison data
		case err != nil:
			t.Fatalf("send: %v", err)
		}
		want = append(want, d)
	}
	for i, m := range bobApp.stored(t, 0, len(want)) {
		if len(m.Data) != len(want[i]) {
			t.Fatalf("message %d: %d bytes of data, want %d", i+1, len(m.Data), len(want[i]))
		}
	}
}
