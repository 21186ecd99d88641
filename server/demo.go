package server

import (
	"net/http"
	"os"
	"path/filepath"
)

// demoFiles are the files of the browser demo (examples/browser) that
// /demo/ serves, by URL path below /demo/: its page, its script and the one
// MQTT.js bundle the page loads. Nothing else of the directory, node_modules
// least of all, is served.
var demoFiles = map[string]string{
	"":                                   "index.html",
	"index.html":                         "index.html",
	"app.js":                             "app.js",
	"node_modules/mqtt/dist/mqtt.min.js": "node_modules/mqtt/dist/mqtt.min.js",
}

// demoHandler serves demoFiles from dir, with the /demo/ prefix stripped;
// any other path is 404.
func demoHandler(dir string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		name, ok := demoFiles[r.URL.Path]
		if !ok || r.Method != http.MethodGet && r.Method != http.MethodHead {
			http.NotFound(w, r)
			return
		}
		f, err := os.Open(filepath.Join(dir, filepath.FromSlash(name)))
		if err != nil {
			http.NotFound(w, r)
			return
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil || !st.Mode().IsRegular() {
			http.NotFound(w, r)
			return
		}
		http.ServeContent(w, r, name, st.ModTime(), f)
	})
}
