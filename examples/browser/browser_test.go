// Package browser drives the browser demo in headless Chromium: two pages,
// one types, the other shows "… is typing", then the message.
package browser

import (
	"context"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/imbridge/imbridge/internal/needs"
	"github.com/imbridge/imbridge/internal/testserver"
	"github.com/imbridge/imbridge/server"
)

func TestBrowserDemo(t *testing.T) {
	exe := needs.Tool(t, "Debian: apt-get install chromium", "chromium", "chromium-browser", "google-chrome")
	needs.File(t, "run npm ci in examples/browser", "node_modules/mqtt/dist/mqtt.min.js")
	dir, _ := filepath.Abs(".")
	n := testserver.Start(t, func(c *server.Config) { c.DemoDir = dir })

	// Something in the history before the pages open.
	req := `{"from":"alice","to":"bob","data":{"text":"from yesterday"}}`
	if code, _ := post(t, n, req); code != 200 {
		t.Fatalf("seeding history: %d", code)
	}

	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(exe), chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.UserDataDir(t.TempDir()))
	alloc, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancel()
	// The first run on a context starts the browser (or tab) and must not
	// carry a timeout; every later step gets one. alice's tab is made from
	// bob's once the browser runs, so that both share it.
	bob, cancel := chromedp.NewContext(alloc)
	defer cancel()
	if err := chromedp.Do(bob); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	alice, cancel := chromedp.NewContext(bob)
	defer cancel()
	if err := chromedp.Do(alice); err != nil {
		t.Fatalf("open a second tab: %v", err)
	}
	page := func(user, peer string) string {
		frag := url.Values{"user": {user}, "peer": {peer}, "token": {n.Token(user)}, "ws": {n.WSURL()}}
		return n.HTTPURL() + "/demo/#" + frag.Encode()
	}
	do := func(ctx context.Context, what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := chromedp.Do(ctx, steps...); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	text := func(ctx context.Context, sel string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
		if err != nil {
			t.Fatalf("text of %s: %v", sel, err)
		}
		return s
	}
	poll := func(js string) chromedp.Action[chromedp.Void] { return chromedp.Poll[chromedp.Void](js) }

	do(bob, "open bob's page",
		chromedp.Navigate(page("bob", "alice")),
		chromedp.WaitVisible(chromedp.CSS(`#status.connected`)),
		chromedp.WaitVisible(chromedp.CSS(`#messages li[data-from="alice"]`)))
	do(bob, "the login form is hidden", poll(`getComputedStyle(document.getElementById('login')).display === 'none'`))
	if h := text(bob, `#messages`); !strings.Contains(h, "from yesterday") {
		t.Fatalf("history not shown: %q", h)
	}
	do(alice, "open alice's page",
		chromedp.Navigate(page("alice", "bob")),
		chromedp.WaitVisible(chromedp.CSS(`#status.connected`)))

	do(alice, "alice types", chromedp.SendKeys(chromedp.CSS(`#input`), "hello bob"))
	do(bob, "bob sees the indicator",
		poll(`document.getElementById('typing').textContent === 'alice is typing…'`))

	do(alice, "alice sends", chromedp.Click(chromedp.CSS(`#send`)))
	do(bob, "bob sees the message and the indicator cleared",
		poll(`[...document.querySelectorAll('#messages li[data-from="alice"]')].some(li => li.textContent === 'hello bob')`),
		poll(`document.getElementById('typing').textContent === ''`))
	if last := text(bob, `#messages li:last-child`); last != "hello bob" {
		t.Fatalf("last message on bob's page: %q", last)
	}
	do(alice, "alice's own message is confirmed by its stored copy",
		chromedp.WaitVisible(chromedp.CSS(`#messages li.mine:not(.pending)`)))
	if got := n.Health().Bridge.Delivered; got < 1 {
		t.Fatal("no online-only indicator was delivered")
	}
}
