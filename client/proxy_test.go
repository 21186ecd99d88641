package client_test

import (
	"bufio"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
)

// proxy forwards MQTT connections from 127.0.0.1 to a node, and injects the
// faults the SDK must survive: it cuts connections, and drops chosen PUBLISH
// packets on their way from the server to the device, as a server does on a
// full write queue. It reads its node's state only through the gate.
type proxy struct {
	t      *testing.T
	ln     net.Listener
	target string

	mu      sync.Mutex                              // guards the fields below
	conns   map[net.Conn]bool                       // open connections, both sides
	drop    func(topic string, payload []byte) bool // server->device PUBLISHes to drop; nil drops none
	subacks int                                     // the next SUBACKs to drop
	gate    func() bool                             // new connections are refused while it reports false; nil admits all
	wg      sync.WaitGroup                          // the copying goroutines
}

// newProxy listens on 127.0.0.1 and forwards to addr (host:port) until the
// test ends.
func newProxy(t *testing.T, addr string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{t: t, ln: ln, target: addr, conns: map[net.Conn]bool{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() {
		ln.Close()
		p.cut()
		p.wg.Wait()
	})
	return p
}

// URL returns the MQTT URL of the proxy.
func (p *proxy) URL() string { return "tcp://" + p.ln.Addr().String() }

// setDrop sets which server->device PUBLISH packets are dropped from now on.
func (p *proxy) setDrop(f func(topic string, payload []byte) bool) {
	p.mu.Lock()
	p.drop = f
	p.mu.Unlock()
}

// setGate refuses new connections while admit reports false.
func (p *proxy) setGate(admit func() bool) {
	p.mu.Lock()
	p.gate = admit
	p.mu.Unlock()
}

// dropSubacks drops the next n SUBACK packets.
func (p *proxy) dropSubacks(n int) {
	p.mu.Lock()
	p.subacks = n
	p.mu.Unlock()
}

// cut closes every open connection; the device sees its connection lost.
func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
		delete(p.conns, c)
	}
}

func (p *proxy) accept() {
	defer p.wg.Done()
	for {
		dev, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		gate := p.gate
		p.mu.Unlock()
		if gate != nil && !gate() {
			dev.Close()
			continue
		}
		srv, err := net.Dial("tcp", p.target)
		if err != nil {
			dev.Close()
			continue
		}
		p.mu.Lock()
		p.conns[dev], p.conns[srv] = true, true
		p.mu.Unlock()
		p.wg.Add(2)
		go func() {
			defer p.wg.Done()
			io.Copy(srv, dev)
			srv.Close()
			dev.Close()
		}()
		go func() {
			defer p.wg.Done()
			p.filter(dev, srv)
			srv.Close()
			dev.Close()
		}()
	}
}

// filter copies MQTT packets from src to dst, leaving out the PUBLISH
// packets that drop selects.
func (p *proxy) filter(dst io.Writer, src io.Reader) {
	r := bufio.NewReader(src)
	for {
		pk, err := readPacket(r)
		if err != nil {
			return
		}
		if pk[0]>>4 == 9 { // SUBACK
			p.mu.Lock()
			drop := p.subacks > 0
			if drop {
				p.subacks--
			}
			p.mu.Unlock()
			if drop {
				continue
			}
		}
		if pk[0]>>4 == 3 { // PUBLISH
			topic, payload := publishParts(pk)
			p.mu.Lock()
			drop := p.drop
			p.mu.Unlock()
			if drop != nil && drop(topic, payload) {
				continue
			}
		}
		if _, err := dst.Write(pk); err != nil {
			return
		}
	}
}

// readPacket reads one MQTT control packet, fixed header included.
func readPacket(r *bufio.Reader) ([]byte, error) {
	head, err := r.ReadByte()
	if err != nil {
		return nil, err
	}
	pk := []byte{head}
	n, shift := 0, 0
	for {
		b, err := r.ReadByte()
		if err != nil {
			return nil, err
		}
		pk = append(pk, b)
		n |= int(b&0x7f) << shift
		if b&0x80 == 0 {
			break
		}
		if shift += 7; shift > 21 {
			return nil, errors.New("bad remaining length")
		}
	}
	start := len(pk)
	pk = append(pk, make([]byte, n)...)
	_, err = io.ReadFull(r, pk[start:])
	return pk, err
}

// publishParts returns the topic and payload of an MQTT 3.1.1 PUBLISH.
func publishParts(pk []byte) (string, []byte) {
	i := 1
	for pk[i]&0x80 != 0 {
		i++
	}
	i++
	n := int(binary.BigEndian.Uint16(pk[i:]))
	topic := string(pk[i+2 : i+2+n])
	i += 2 + n
	if (pk[0]>>1)&3 > 0 { // QoS 1 or 2: packet id
		i += 2
	}
	return topic, pk[i:]
}
