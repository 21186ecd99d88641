package main

import (
	"testing"

	"github.com/imbridge/imbridge/internal/testnats"
	"github.com/imbridge/imbridge/internal/testpg"
)

// clusterEnv is the environment of node name of a cluster joined through
// NATS at natsURL, with its history in PostgreSQL at dsn.
func clusterEnv(t *testing.T, dsn, natsURL, name string) []string {
	return append(pgEnv(t.TempDir(), dsn), "MQTTD_NATS="+natsURL, "MQTTD_NODE="+name)
}

// TestClusterKill9: three nodes share one PostgreSQL and one NATS, each
// under load from MQTT and HTTP senders of its own, all writing to one
// receiver. One node is killed with SIGKILL; the other two go on. Every
// acknowledged message, on every node, is in the history exactly once, and
// every conversation's seq and the receiver's inboxSeq run without holes:
// what a device that was on the killed node finds when it syncs on another.
func TestClusterKill9(t *testing.T) {
	pg := testpg.Start(t)
	dsn := pg.NewDB(t)
	ns := testnats.Start(t)
	var procs []*proc
	for _, name := range []string{"a", "b", "c"} {
		procs = append(procs, start(t, clusterEnv(t, dsn, ns.URL(), name)))
	}
	a := newAcked()
	var dones []chan struct{}
	for i, p := range procs {
		done := make(chan struct{})
		dones = append(dones, done)
		go func() { load(t, p, i, a); close(done) }()
	}
	a.waitFor(t, 300)
	procs[2].kill(t)
	<-dones[2]
	killedAt := a.count()
	a.waitFor(t, killedAt+300) // the other two nodes go on
	procs[0].stop(t)
	procs[1].stop(t)
	<-dones[0]
	<-dones[1]

	p := start(t, clusterEnv(t, dsn, ns.URL(), "d"))
	n := checkHistory(t, p, a)
	p.stop(t)
	t.Logf("%d messages stored, %d acknowledged (%d before the kill)", n, a.count(), killedAt)
}

// TestClusterStartErrors: -nats without -postgres, and a NATS nobody
// answers, stop mqttd at start with one clear line.
func TestClusterStartErrors(t *testing.T) {
	startFails(t, append(crashEnv(t.TempDir()), "MQTTD_NATS=nats://127.0.0.1:1"), "-nats needs -postgres")
	pg := testpg.Start(t)
	startFails(t, clusterEnv(t, pg.NewDB(t), "nats://127.0.0.1:1", "a"), "connect to NATS nats://127.0.0.1:1")
	noSecret := []string{"MQTTD_MQTT=127.0.0.1:0", "MQTTD_WS=", "MQTTD_HTTP=127.0.0.1:0", "MQTTD_DATA=" + t.TempDir(),
		"MQTTD_NATS=nats://127.0.0.1:1", "MQTTD_POSTGRES=postgres://x@127.0.0.1:1/x"}
	startFails(t, noSecret, "-nats needs -secret or -secret-file")
}
