package browser

import (
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imbridge/imbridge/internal/testserver"
	"github.com/imbridge/imbridge/server"
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

// TestDemoServesOnlyItsFiles: mqttd -demo DIR serves the demo's page, its
// script and the one MQTT.js bundle the page loads, and nothing else of DIR:
// not the rest of node_modules, the package files or the tests.
func TestDemoServesOnlyItsFiles(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{
		"index.html": "<!doctype html>", "app.js": "// app", "node_modules/mqtt/dist/mqtt.min.js": "// mqtt.js",
		"package.json": "{}", "package-lock.json": "{}", "browser_test.go": "package browser",
		"node_modules/mqtt/package.json": "{}", "node_modules/mqtt/dist/mqtt.js": "// unminified",
		"node_modules/ws/index.js": "// another package", "node_modules/.package-lock.json": "{}",
	}
	for name, body := range files {
		path := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	n := testserver.Start(t, func(c *server.Config) { c.DemoDir = dir })
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get(n.HTTPURL() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for path, want := range map[string]string{
		"/demo/": "<!doctype html>", "/demo/index.html": "<!doctype html>", "/demo/app.js": "// app",
		"/demo/node_modules/mqtt/dist/mqtt.min.js": "// mqtt.js",
	} {
		if code, body := get(path); code != http.StatusOK || body != want {
			t.Errorf("GET %s: %d %q, want 200 %q", path, code, body, want)
		}
	}
	for _, path := range []string{"/demo/package.json", "/demo/package-lock.json", "/demo/browser_test.go",
		"/demo/node_modules/", "/demo/node_modules/mqtt/package.json", "/demo/node_modules/mqtt/dist/mqtt.js",
		"/demo/node_modules/ws/index.js", "/demo/node_modules/.package-lock.json", "/demo/node_modules/mqtt/dist/",
		"/demo/../go.mod", "/demo/%2e%2e/go.mod", "/demo/./app.js/"} {
		if code, body := get(path); code != http.StatusNotFound {
			t.Errorf("GET %s: %d %q, want 404", path, code, body)
		}
	}
}
