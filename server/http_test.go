package server_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/imbridge/imbridge/internal/testserver"
	"github.com/imbridge/imbridge/protocol"
)

func httpSync(t *testing.T, n *testserver.Node, token string, after uint64) protocol.Page {
	t.Helper()
	req, _ := http.NewRequest("GET", fmt.Sprintf("%s/v1/sync?after=%d&limit=1000", n.HTTPURL(), after), nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var p protocol.Page
	if err := json.NewDecoder(resp.Body).Decode(&p); err != nil || resp.StatusCode != 200 {
		t.Fatalf("sync: %d %v", resp.StatusCode, err)
	}
	return p
}

// TestHealthz answers with the node's counters.
func TestHealthz(t *testing.T) {
	n := testserver.Start(t)
	v3(t, n, "bob", opts{}) // one device, three subscriptions
	resp, err := http.Get(n.HTTPURL() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var h struct {
		Status        string `json:"status"`
		Epoch         string `json:"epoch"`
		Clients       int    `json:"clients"`
		Subscriptions int    `json:"subscriptions"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&h); err != nil || h.Status != "ok" || h.Epoch == "" || h.Clients != 1 || h.Subscriptions != 3 {
		t.Fatalf("healthz: %+v %v", h, err)
	}
}

// TestMetrics: /metrics speaks Prometheus and counts what happened.
func TestMetrics(t *testing.T) {
	n := testserver.Start(t)
	alice := v3(t, n, "alice", opts{})
	v3(t, n, "bob", opts{})
	alice.Send(`{"to":"bob","data":"x"}`)
	alice.Send(`{"to":"bob","data":"typing","onlineUserOnly":true}`)
	alice.Send(`{"to":"b/b","data":1}`)
	httpSync(t, n, n.Token("bob"), 0)
	resp, err := http.Get(n.HTTPURL() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	body := string(b)
	for _, want := range []string{
		`imbridge_connections 2`,
		`imbridge_messages_total{kind="stored",outcome="stored"} 1`,
		`imbridge_messages_total{kind="online",outcome="delivered"} 1`,
		`imbridge_rejected_total{reason="invalid_to"} 1`,
		`imbridge_store_commit_messages_count 1`,
		`imbridge_history_query_seconds_count{kind="sync"} 1`,
		`imbridge_prelogin_sockets 0`,
		`imbridge_sockets_closed_total{reason="connect_timeout"} 0`,
		`imbridge_accept_errors_total{listener="tcp"} 0`,
		`imbridge_listener_degraded{listener="ws"} 0`,
		`go_goroutines`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}
