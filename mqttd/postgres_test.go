package main

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/imbridge/imbridge/internal/poll"
	"github.com/imbridge/imbridge/internal/testdevice"
	"github.com/imbridge/imbridge/internal/testpg"
	"github.com/imbridge/imbridge/protocol"
)

// pgEnv is crashEnv with the history in PostgreSQL at dsn.
func pgEnv(data, dsn string) []string { return append(crashEnv(data), "MQTTD_POSTGRES="+dsn) }

// stored returns how many messages with client id id PostgreSQL holds.
func stored(t *testing.T, dsn, id string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var n int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM messages WHERE client_id = $1`, id).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// postHTTP sends one message over HTTP as the admin and returns the status.
func postHTTP(t *testing.T, p *proc, from, id string) (int, error) {
	req, _ := http.NewRequest("POST", "http://"+p.web+"/v1/messages",
		strings.NewReader(fmt.Sprintf(`{"from":%q,"to":"bob","id":%q,"data":1}`, from, id)))
	req.Header.Set("Authorization", "Bearer "+mint(t, "ops", true))
	resp, err := (&http.Client{Timeout: 20 * time.Second}).Do(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// TestPostgresDownAndBack: with -postgres, a stored send over MQTT and over
// HTTP is in PostgreSQL once acknowledged; while PostgreSQL is stopped,
// stored sends are refused (MQTT 5 PUBACK reason code, an error receipt
// "unavailable", HTTP 503); once it is started again on the same port, sends
// succeed without restarting mqttd.
func TestPostgresDownAndBack(t *testing.T) {
	srv := testpg.Start(t)
	dsn := srv.NewDB(t)
	p := start(t, pgEnv(t.TempDir(), dsn))
	alice := testdevice.ConnectV5(t, p.mqtt, "alice", testdevice.Options{Token: func(u string) string { return mint(t, u, false) }})
	send := func(id string) (byte, protocol.Receipt) {
		code := alice.PublishV5(protocol.SendTopic("alice"), 1, fmt.Sprintf(`{"to":"bob","id":%q,"data":1}`, id), nil)
		return code, alice.Expect(protocol.ReplyTopic("alice")).Receipt(t)
	}
	if code, r := send("m1"); code != 0 || r.Status != protocol.StatusStored {
		t.Fatalf("MQTT send: PUBACK %#x, receipt %+v", code, r)
	}
	if n := stored(t, dsn, "m1"); n != 1 {
		t.Fatalf("m1 is %d times in PostgreSQL after its PUBACK", n)
	}
	if code, err := postHTTP(t, p, "carol", "h1"); code != 200 || err != nil {
		t.Fatalf("HTTP send: %d %v", code, err)
	}
	if n := stored(t, dsn, "h1"); n != 1 {
		t.Fatalf("h1 is %d times in PostgreSQL after its 200", n)
	}

	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	code, r := send("m2")
	if code < 0x80 || r.Status != protocol.StatusError || r.Error == nil || r.Error.Code != protocol.CodeUnavailable {
		t.Fatalf("MQTT send with PostgreSQL down: PUBACK %#x, receipt %+v", code, r)
	}
	t.Logf("with PostgreSQL down: PUBACK %#x, receipt %q", code, r.Error.Message)
	if code, err := postHTTP(t, p, "carol", "h2"); code != http.StatusServiceUnavailable || err != nil {
		t.Fatalf("HTTP send with PostgreSQL down: %d %v, want 503", code, err)
	}

	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	poll.For(t, poll.Total, 50*time.Millisecond, func() error {
		code, err := postHTTP(t, p, "carol", "h2")
		if err == nil && code != 200 {
			err = fmt.Errorf("HTTP %d", code)
		}
		return err
	})
	if code, r := send("m2"); code != 0 || r.Status != protocol.StatusStored || r.Seq != 2 {
		t.Fatalf("MQTT send after the restart: PUBACK %#x, receipt %+v", code, r)
	}
	if a, b := stored(t, dsn, "m2"), stored(t, dsn, "h2"); a != 1 || b != 1 {
		t.Fatalf("after the restart PostgreSQL holds m2 %d times, h2 %d times", a, b)
	}
	p.stop(t)
}

// TestPostgresFailover: the history on a primary with a synchronous
// standby, mqttd given both hosts; under MQTT and HTTP senders the primary
// is killed (SIGKILL) and the standby promoted; mqttd, not restarted, finds
// the new primary and takes sends again. Every acknowledged message is in
// the history exactly once, without holes.
func TestPostgresFailover(t *testing.T) {
	pair := testpg.StartPair(t, "imbridge")
	dsn := pair.DSN("imbridge")
	data := t.TempDir()
	p := start(t, pgEnv(data, dsn))
	a := newAcked()
	done := make(chan struct{})
	go func() { load(t, p, 0, a); close(done) }()
	a.waitFor(t, 200)
	if err := pair.Failover(); err != nil {
		t.Fatal(err)
	}
	<-done // every sender stopped on the failure
	before := a.count()
	target := before + 200
	deadline := time.Now().Add(testdevice.Wait)
	for round := 1; a.count() < target; round++ {
		if time.Now().After(deadline) {
			t.Fatalf("%d sends acknowledged after the failover in %v", a.count()-before, testdevice.Wait)
		}
		done := make(chan struct{})
		go func() { load(t, p, round, a); close(done) }()
		select {
		case <-done: // a sender met the failover's tail; start again
		case <-a.reached(target):
			p.stop(t)
			<-done
		}
	}
	p = start(t, pgEnv(data, dsn))
	n := checkHistory(t, p, a)
	p.stop(t)
	t.Logf("%d messages stored, %d acknowledged before the failover, %d in all", n, before, a.count())
}

// TestPostgresUnreachable: mqttd with a -postgres nobody answers exits
// non-zero at once with one clear line.
func TestPostgresUnreachable(t *testing.T) {
	dsn, addr := testpg.UnreachableDSN(t)
	startFails(t, pgEnv(t.TempDir(), dsn), "mqttd: storage: postgres: open imbridge@"+addr)
}
