package bridge_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/imbridge/imbridge/internal/testserver"
	"github.com/imbridge/imbridge/protocol"
	"github.com/imbridge/imbridge/server"
	"github.com/imbridge/imbridge/storage"
)

func httpDo(t *testing.T, method, url, token, body string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func httpPage(t *testing.T, n *testserver.Node, path, token string) protocol.Page {
	t.Helper()
	code, body := httpDo(t, "GET", n.HTTPURL()+path, token, "")
	if code != 200 {
		t.Fatalf("GET %s: %d %s", path, code, body)
	}
	var p protocol.Page
	if err := json.Unmarshal(body, &p); err != nil || p.Messages == nil {
		t.Fatalf("GET %s: %v %s", path, err, body)
	}
	return p
}

func httpHistory(t *testing.T, n *testserver.Node, token, query string) protocol.Page {
	return httpPage(t, n, "/v1/history?"+query, token)
}

func httpSync(t *testing.T, n *testserver.Node, token, query string) protocol.Page {
	return httpPage(t, n, "/v1/sync?"+query, token)
}

func httpSend(t *testing.T, n *testserver.Node, token, body string) (int, protocol.Receipt) {
	t.Helper()
	code, b := httpDo(t, "POST", n.HTTPURL()+"/v1/messages", token, body)
	var r protocol.Receipt
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("send answer %d %s: %v", code, b, err)
	}
	return code, r
}

// TestHTTPHistoryPaging pages back and forth through a conversation with the
// cursors the API returns.
func TestHTTPHistoryPaging(t *testing.T) {
	n := testserver.Start(t)
	admin := n.AdminToken()
	for i := range 7 {
		from, to := "alice", "bob"
		if i%2 == 1 {
			from, to = to, from
		}
		if code, r := httpSend(t, n, admin, `{"from":"`+from+`","to":"`+to+`","data":{"i":`+string(rune('0'+i))+`}}`); code != 200 || r.Seq != uint64(i+1) {
			t.Fatalf("send %d: %d %+v", i, code, r)
		}
	}
	alice := n.Token("alice")
	p := httpHistory(t, n, alice, "with=bob&limit=3")
	if seqs(p) != "5 6 7" || !p.More || p.NextBefore != 5 || p.Epoch == "" {
		t.Fatalf("newest page %s %+v", seqs(p), p)
	}
	p = httpHistory(t, n, alice, "with=bob&limit=3&before=5")
	if seqs(p) != "2 3 4" || !p.More || p.NextBefore != 2 {
		t.Fatalf("older page %s %+v", seqs(p), p)
	}
	p = httpHistory(t, n, alice, "with=bob&limit=3&before=2")
	if seqs(p) != "1" || p.More {
		t.Fatalf("oldest page %s %+v", seqs(p), p)
	}
	p = httpHistory(t, n, n.Token("bob"), "with=alice&after=4")
	if seqs(p) != "5 6 7" || p.More {
		t.Fatalf("after page %s %+v", seqs(p), p)
	}
	// carol is in no conversation with them: she sees only her own (empty) one.
	if p := httpHistory(t, n, n.Token("carol"), "with=bob"); len(p.Messages) != 0 {
		t.Fatalf("carol read %d messages", len(p.Messages))
	}
	if p := httpSync(t, n, n.Token("bob"), "after=5&limit=1"); len(p.Messages) != 1 || p.Messages[0].InboxSeq != 6 || !p.More || p.NextAfter != 6 {
		t.Fatalf("sync page %+v", p)
	}
}

func seqs(p protocol.Page) string {
	var s []string
	for _, m := range p.Messages {
		b, _ := json.Marshal(m.Seq)
		s = append(s, string(b))
	}
	return strings.Join(s, " ")
}

// TestHTTPErrors: every malformed or unauthorized request gets its status
// and error code.
func TestHTTPErrors(t *testing.T) {
	n := testserver.Start(t)
	alice, admin := n.Token("alice"), n.AdminToken()
	for _, tc := range []struct {
		method, path, token, body string
		status                    int
		code                      protocol.ErrorCode
	}{
		{"GET", "/v1/history?with=bob", "", "", 401, protocol.CodeUnauthorized},
		{"GET", "/v1/history?with=bob", "garbage", "", 401, protocol.CodeUnauthorized},
		{"GET", "/v1/history?with=bob", admin, "", 403, protocol.CodeForbidden},
		{"GET", "/v1/history", alice, "", 400, protocol.CodeInvalidQuery},
		{"GET", "/v1/history?with=b/b", alice, "", 400, protocol.CodeInvalidQuery},
		{"GET", "/v1/history?with=bob&limit=0", alice, "", 400, protocol.CodeInvalidQuery},
		{"GET", "/v1/history?with=bob&limit=1001", alice, "", 400, protocol.CodeInvalidQuery},
		{"GET", "/v1/history?with=bob&before=x", alice, "", 400, protocol.CodeInvalidQuery},
		{"GET", "/v1/history?with=bob&before=3&after=1", alice, "", 400, protocol.CodeInvalidQuery},
		{"GET", "/v1/sync?after=-1", alice, "", 400, protocol.CodeInvalidQuery},
		{"POST", "/v1/messages", "", `{"to":"bob","data":1}`, 401, protocol.CodeUnauthorized},
		{"POST", "/v1/messages", alice, `{"to":"bob","data":1,"from":"carol"}`, 403, protocol.CodeForbidden},
		{"POST", "/v1/messages", admin, `{"to":"bob","data":1}`, 400, protocol.CodeInvalidFrom},
		{"POST", "/v1/messages", alice, `{"to":"bob"`, 400, protocol.CodeBadJSON},
		{"POST", "/v1/messages", alice, `{"to":"bob","data":"` + strings.Repeat("x", 70<<10) + `"}`, 413, protocol.CodeTooLarge},
	} {
		status, body := httpDo(t, tc.method, n.HTTPURL()+tc.path, tc.token, tc.body)
		var v struct {
			Error *protocol.Error `json:"error"`
		}
		json.Unmarshal(body, &v)
		if status != tc.status || v.Error == nil || v.Error.Code != tc.code {
			t.Errorf("%s %s: %d %.200s, want %d %s", tc.method, tc.path, status, body, tc.status, tc.code)
		}
	}
	if p := httpHistory(t, n, alice, "with=bob"); len(p.Messages) != 0 {
		t.Fatalf("refused sends were stored: %+v", p.Messages)
	}
}

// TestHTTPSendReachesDevices: a user-token send and an admin send over HTTP
// behave like device sends, both kinds.
func TestHTTPSendReachesDevices(t *testing.T) {
	n := testserver.Start(t)
	bob := v3(t, n, "bob", opts{})
	code, r := httpSend(t, n, n.Token("alice"), `{"to":"bob","data":"hello","id":"h1"}`)
	if code != 200 || r.Status != protocol.StatusStored || r.ID != "h1" {
		t.Fatalf("%d %+v", code, r)
	}
	if m := bob.Expect(protocol.InboxTopic("bob")).Message(t); m.From != "alice" || m.ClientMsgID != "h1" {
		t.Fatalf("%+v", m)
	}
	code, r = httpSend(t, n, n.AdminToken(), `{"from":"system","to":"bob","onlineUserOnly":true,"data":{"command":"textInput"}}`)
	if code != 200 || r.Status != protocol.StatusDelivered {
		t.Fatalf("%d %+v", code, r)
	}
	if m := bob.Expect(protocol.OnlineTopic("bob")).Message(t); m.From != "system" || !m.OnlineUserOnly {
		t.Fatalf("%+v", m)
	}
	if code, r = httpSend(t, n, n.Token("alice"), `{"to":"nobody","onlineUserOnly":true,"data":1}`); code != 200 || r.Status != protocol.StatusOffline {
		t.Fatalf("%d %+v", code, r)
	}
}

// TestRetention: the background pruner keeps the newest messages of each
// conversation; history and sync serve what is left, sync skipping the rest.
func TestRetention(t *testing.T) {
	n := testserver.Start(t, func(c *server.Config) {
		c.Retention, c.PruneInterval = storage.Retention{MaxCount: 2}, 20*time.Millisecond
	})
	admin := n.AdminToken()
	for i := range 5 {
		httpSend(t, n, admin, fmt.Sprintf(`{"from":"alice","to":"bob","data":%d}`, i))
	}
	httpSend(t, n, admin, `{"from":"carol","to":"bob","data":"c"}`)
	waitFor(t, "3 messages pruned", func() bool { return n.Health().Bridge.Pruned >= 3 })
	if p := httpHistory(t, n, n.Token("bob"), "with=alice"); seqs(p) != "4 5" {
		t.Fatalf("alice|bob keeps %s", seqs(p))
	}
	p := httpSync(t, n, n.Token("bob"), "")
	var inbox []uint64
	for _, m := range p.Messages {
		inbox = append(inbox, m.InboxSeq)
	}
	if fmt.Sprint(inbox) != "[4 5 6]" {
		t.Fatalf("bob's sync after pruning: %v", inbox)
	}
}
