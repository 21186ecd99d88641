package client_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/imbridge/imbridge/internal/testserver"
)

// httpSend sends alice -> bob the number i over the HTTP API (an app server).
func httpSend(t *testing.T, n *testserver.Node, admin string, i int) {
	t.Helper()
	req, _ := http.NewRequest("POST", n.HTTPURL()+"/v1/messages", strings.NewReader(fmt.Sprintf(`{"from":"alice","to":"bob","data":%d}`, i)))
	req.Header.Set("Authorization", "Bearer "+admin)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("send %d: %d", i, resp.StatusCode)
	}
}
