package server

import (
	"bytes"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"testing"
)

// TestIPGroup: IPv4 addresses count one by one (IPv4-mapped IPv6 too), IPv6
// addresses by /64.
func TestIPGroup(t *testing.T) {
	group := func(s string) netip.Prefix {
		return ipGroup(net.TCPAddrFromAddrPort(netip.MustParseAddrPort(s)))
	}
	for _, tc := range []struct {
		a, b string
		same bool
	}{
		{"203.0.113.7:1", "203.0.113.7:2", true},
		{"203.0.113.7:1", "203.0.113.8:1", false},
		{"[::ffff:203.0.113.7]:1", "203.0.113.7:1", true},
		{"[2001:db8:1:2::1]:1", "[2001:db8:1:2:ffff:ffff:ffff:ffff]:1", true},
		{"[2001:db8:1:2::1]:1", "[2001:db8:1:3::1]:1", false},
		{"[fe80::1%eth0]:1", "[fe80::2%eth1]:1", true},
	} {
		if got := group(tc.a) == group(tc.b); got != tc.same {
			t.Errorf("%s and %s in one group: %v, want %v (%v, %v)", tc.a, tc.b, got, tc.same, group(tc.a), group(tc.b))
		}
	}
	if p := ipGroup(&net.UnixAddr{Name: "x"}); p.IsValid() {
		t.Errorf("a non-TCP address is grouped: %v", p)
	}
}

// TestOriginChecker: the rules of Config.WSOrigins.
func TestOriginChecker(t *testing.T) {
	for _, tc := range []struct {
		list         []string
		host, origin string
		want         bool
	}{
		{nil, "chat.example.com:8083", "", true},
		{nil, "chat.example.com:8083", "https://chat.example.com", true},
		{nil, "chat.example.com:8083", "http://CHAT.example.com:8080", true},
		{nil, "chat.example.com", "https://evil.example", false},
		{nil, "chat.example.com", "https://chat.example.com.evil.example", false},
		{nil, "[::1]:8083", "http://[::1]:8080", true},
		{nil, "chat.example.com", "null", false},
		{[]string{"https://app.example.com"}, "chat.example.com", "https://app.example.com", true},
		{[]string{"https://app.example.com/"}, "chat.example.com", "https://app.example.com", true},
		{[]string{"https://app.example.com"}, "chat.example.com", "https://app.example.com:444", false},
		{[]string{"https://app.example.com"}, "chat.example.com", "https://chat.example.com", false},
		{[]string{"*"}, "chat.example.com", "https://anything.example", true},
	} {
		r, _ := http.NewRequest("GET", "http://"+tc.host+"/mqtt", nil)
		if tc.origin != "" {
			r.Header.Set("Origin", tc.origin)
		}
		if got := originChecker(tc.list)(r); got != tc.want {
			t.Errorf("list %v, Host %s, Origin %q: %v, want %v", tc.list, tc.host, tc.origin, got, tc.want)
		}
	}
	for _, bad := range []string{"chat.example.com", "https://x.example/path", "https://x.example?q", "", "https://"} {
		if checkOrigin(bad) == nil {
			t.Errorf("origin %q accepted", bad)
		}
	}
}

// countingReader counts the bytes read from it.
type countingReader struct {
	r *bytes.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

// TestReadConnect: the size is judged on the remaining length, before any
// byte of the body is read.
func TestReadConnect(t *testing.T) {
	body := bytes.Repeat([]byte{7}, 200)
	for _, tc := range []struct {
		name   string
		in     []byte
		max    int
		err    error
		readAt int // bytes read when it returned
	}{
		{"fits", append([]byte{0x10, 0xc8, 0x01}, body...), 200, nil, 203},
		{"one over", append([]byte{0x10, 0xc8, 0x01}, body...), 199, errConnectTooLarge, 3},
		{"huge, judged on the first length byte", []byte{0x10, 0xff, 0xff, 0xff, 0x7f}, 8 << 10, errConnectTooLarge, 3},
		{"not CONNECT", []byte{0x30, 0x00}, 100, errNotConnect, 1},
		{"malformed length", []byte{0x10, 0x80, 0x80, 0x80, 0x80, 0x01}, 1 << 30, errMalformedLength, 5},
	} {
		cr := &countingReader{r: bytes.NewReader(tc.in)}
		pk, err := readConnect(cr, tc.max)
		if !errors.Is(err, tc.err) || cr.n > tc.readAt {
			t.Errorf("%s: %v after %d bytes, want %v after at most %d", tc.name, err, cr.n, tc.err, tc.readAt)
		}
		if err == nil && !bytes.Equal(pk, tc.in) {
			t.Errorf("%s: returned % x", tc.name, pk[:8])
		}
	}
}
