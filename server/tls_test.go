package server_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"testing"
	"time"

	"github.com/imbridge/imbridge/internal/testdevice"
	"github.com/imbridge/imbridge/internal/testserver"
	"github.com/imbridge/imbridge/protocol"
	"github.com/imbridge/imbridge/server"
)

// selfSigned makes a certificate for 127.0.0.1, valid for an hour, and the
// pool that trusts it.
func selfSigned(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "imbridge test"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}

// TestTLS: devices over MQTT/TLS and WebSocket/TLS exchange both kinds of
// message; a client that does not trust the certificate is refused.
func TestTLS(t *testing.T) {
	cert, pool := selfSigned(t)
	n := testserver.Start(t, func(c *server.Config) {
		c.MQTTTLSAddr, c.WSSAddr = "127.0.0.1:0", "127.0.0.1:0"
		c.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	})
	trust := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	bob := testdevice.ConnectV3(t, "ssl://"+n.MQTTTLSAddr(), "bob", opts{Token: n.Token, TLS: trust})
	alice := testdevice.ConnectV3(t, "wss://"+n.WSSAddr()+"/mqtt", "alice", opts{Token: n.Token, TLS: trust})
	alice.Send(`{"to":"bob","data":"over tls"}`)
	if m := bob.Expect(protocol.InboxTopic("bob")).Message(t); string(m.Data) != `"over tls"` {
		t.Fatalf("got %s", m.Data)
	}
	alice.Send(`{"to":"bob","data":{"command":"textInput"},"onlineUserOnly":true}`)
	bob.Expect(protocol.OnlineTopic("bob"))
	if _, err := testdevice.DialV3(t, "ssl://"+n.MQTTTLSAddr(), "carol", opts{Token: n.Token, TLS: &tls.Config{MinVersion: tls.VersionTLS12}}); err == nil {
		t.Fatal("a client that does not trust the certificate connected")
	}
}
