package batontest

import (
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
)

// Proxy is a TCP proxy in front of Postgres that a test can cut and restore, to
// partition a worker or master from the database while its process keeps running.
// Cut is a partition that resets connections (the peer sees an error at once);
// Stall is a silent one (packets dropped: nothing arrives, nothing fails, queries
// hang) — the harder case for self-fencing.
type Proxy struct {
	target string
	ln     net.Listener

	mu    sync.Mutex
	cut   bool
	gate  chan struct{} // closed while traffic flows; open (blocking) while stalled
	conns map[net.Conn]bool
	wg    sync.WaitGroup
}

// NewProxy proxies to the host:port of dsn and returns the proxy and a DSN that
// goes through it. It is closed when t ends.
func NewProxy(t testing.TB, dsn string) (*Proxy, string) {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil || u.Host == "" {
		t.Fatalf("batontest: proxy needs a URL-form DSN: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{target: u.Host, ln: ln, conns: map[net.Conn]bool{}, gate: make(chan struct{})}
	close(p.gate)
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.Close)
	u.Host = ln.Addr().String()
	return p, u.String()
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.wg.Add(1)
		go p.connect(c)
	}
}

// connect dials upstream for client c; while stalled the client hangs (a SYN
// that gets no answer), until Restore or Close.
func (p *Proxy) connect(c net.Conn) {
	defer p.wg.Done()
	p.mu.Lock()
	p.conns[c] = true
	gate := p.gate
	p.mu.Unlock()
	<-gate
	p.mu.Lock()
	if p.cut || !p.conns[c] {
		delete(p.conns, c)
		p.mu.Unlock()
		_ = c.Close()
		return
	}
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		delete(p.conns, c)
		p.mu.Unlock()
		_ = c.Close()
		return
	}
	p.conns[up] = true
	p.mu.Unlock()
	p.wg.Add(2)
	go p.pipe(c, up)
	go p.pipe(up, c)
}

func (p *Proxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			// Stalled: hold the bytes (dropped packets that TCP would retransmit
			// once the partition heals).
			p.mu.Lock()
			gate := p.gate
			p.mu.Unlock()
			<-gate
			if _, werr := dst.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	_ = dst.Close()
	_ = src.Close()
	p.mu.Lock()
	delete(p.conns, dst)
	delete(p.conns, src)
	p.mu.Unlock()
}

// Cut drops every connection and refuses new ones until Restore.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	p.openGate()
	for c := range p.conns {
		_ = c.Close()
		delete(p.conns, c)
	}
}

// Stall stops forwarding without closing anything: established connections and new
// ones hang, as behind a firewall that drops packets. Restore resumes them (the
// held bytes are delivered), Cut resets them.
func (p *Proxy) Stall() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.gate:
		p.gate = make(chan struct{})
	default: // already stalled
	}
}

// Restore ends a Cut or a Stall.
func (p *Proxy) Restore() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = false
	p.openGate()
}

func (p *Proxy) openGate() {
	select {
	case <-p.gate:
	default:
		close(p.gate)
	}
}

// Close stops the proxy.
func (p *Proxy) Close() {
	_ = p.ln.Close()
	p.Cut()
	p.wg.Wait()
}

// String names the proxy for logs.
func (p *Proxy) String() string {
	return fmt.Sprintf("proxy %s -> %s", strings.TrimSpace(p.ln.Addr().String()), p.target)
}
