package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/imbridge/imbridge/protocol"
	"github.com/imbridge/imbridge/storage"
)

// tmpfs mounts a tmpfs of the given size on a new directory and unmounts it
// at cleanup. It skips the test where mounting is not allowed.
func tmpfs(t *testing.T, size string) string {
	t.Helper()
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs here (needs root): %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })
	return dir
}

// TestDiskFull fills a small filesystem under mqttd through MQTT and HTTP:
// sends start failing with a clear error (MQTT 3.1.1: no PUBACK and the
// connection closed; HTTP: 503 store_failed), never with an acknowledgement
// for what was not stored. After a restart on the full disk every
// acknowledged message is there and the file is consistent.
func TestDiskFull(t *testing.T) {
	data := tmpfs(t, "3m")
	p := start(t, crashEnv(data))
	a := newAcked()
	big := strings.Repeat("x", 60<<10)

	// MQTT until the first send is not acknowledged.
	c := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + p.mqtt).SetClientID("filler").
		SetUsername("m0").SetPassword(mint(t, "m0", false)).SetAutoReconnect(false))
	if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	mqttFailed := false
	for i := 0; i < 200 && !mqttFailed; i++ {
		id := fmt.Sprintf("m-%d", i)
		tok := c.Publish(protocol.SendTopic("m0"), 1, false, fmt.Sprintf(`{"to":"sink","id":%q,"data":%q}`, id, big))
		if tok.WaitTimeout(5*time.Second) && tok.Error() == nil && c.IsConnectionOpen() {
			a.add(id, "m0")
		} else {
			mqttFailed = true
		}
	}
	c.Disconnect(0)
	// HTTP until the answers are all 503 (a failed commit can free the
	// pages it had taken, so a smaller write may still fit once).
	var refusals int
	for i := 0; i < 200 && refusals < 5; i++ {
		id := fmt.Sprintf("h-%d", i)
		req, _ := http.NewRequest("POST", "http://"+p.web+"/v1/messages",
			strings.NewReader(fmt.Sprintf(`{"from":"h0","to":"sink","id":%q,"data":%q}`, id, big)))
		req.Header.Set("Authorization", "Bearer "+mint(t, "ops", true))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var r protocol.Receipt
		json.NewDecoder(resp.Body).Decode(&r)
		resp.Body.Close()
		switch resp.StatusCode {
		case http.StatusOK:
			a.add(id, "h0")
		case http.StatusServiceUnavailable:
			if r.Error == nil || r.Error.Code != protocol.CodeStoreFailed || !strings.Contains(r.Error.Message, "no space") {
				t.Fatalf("503 without a clear error: %+v", r)
			}
			refusals++
		default:
			t.Fatalf("HTTP send on a full disk: %d %+v", resp.StatusCode, r)
		}
	}
	if !mqttFailed || refusals < 5 {
		t.Fatalf("the disk did not fill: mqtt failed %v, %d HTTP refusals", mqttFailed, refusals)
	}
	p.stop(t)
	t.Logf("%d messages of 60 KB acknowledged before the 3 MB disk filled", len(a.ids))
	if err := storage.Verify(filepath.Join(data, "history.db"), time.Second); err != nil {
		t.Fatal(err)
	}
	p = start(t, crashEnv(data))
	checkHistory(t, p, a)
	p.stop(t)
}

// TestReadOnlyDataDir: a history on a read-only filesystem stops mqttd at
// start with a clear message.
func TestReadOnlyDataDir(t *testing.T) {
	data := tmpfs(t, "8m")
	p := start(t, crashEnv(data))
	p.stop(t)
	if out, err := exec.Command("mount", "-o", "remount,ro", data).CombinedOutput(); err != nil {
		t.Skipf("cannot remount read-only: %v %s", err, out)
	}
	startFails(t, crashEnv(data), "read-only file system")
}
