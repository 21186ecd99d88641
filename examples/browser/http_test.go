package browser

import (
	"net/http"
	"strings"
	"testing"

	"github.com/imbridge/imbridge/internal/testserver"
)

func post(t *testing.T, n *testserver.Node, body string) (int, error) {
	t.Helper()
	req, _ := http.NewRequest("POST", n.HTTPURL()+"/v1/messages", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+n.AdminToken())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}
