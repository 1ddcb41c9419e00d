package httpapi

import (
	"fmt"
	"net/http"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/baton-scheduler/baton/db"
)

// Live updates of the status page: /ui/events is a server-sent event stream
// that says "change" when what the pages show may have changed. One goroutine
// per server reads a cheap signature (db.UILiveSignature) every LiveEvery while
// at least one page listens, and tells every listener when it moved; the page's
// script (ui/static/live.js) then re-reads its content. Pages without
// JavaScript, or whose stream fails, poll as before.

// LiveEvery is how often the signature is read while a page listens.
const LiveEvery = time.Second

// liveKeepAlive is the comment sent on a quiet stream, so proxies keep it open.
const liveKeepAlive = 15 * time.Second

type liveFeed struct {
	mu        sync.Mutex
	listeners map[chan struct{}]struct{}
	running   bool
	wg        sync.WaitGroup
}

// listen registers a listener (a channel told of each change) and starts the
// reader if none runs; the returned func unregisters it.
func (s *Server) listen() (<-chan struct{}, func()) {
	f := &s.live
	ch := make(chan struct{}, 1)
	f.mu.Lock()
	if f.listeners == nil {
		f.listeners = map[chan struct{}]struct{}{}
	}
	f.listeners[ch] = struct{}{}
	if !f.running {
		f.running = true
		f.wg.Add(1)
		go s.readLive()
	}
	f.mu.Unlock()
	return ch, func() {
		f.mu.Lock()
		delete(f.listeners, ch)
		f.mu.Unlock()
	}
}

// readLive reads the signature every LiveEvery until no page listens or the
// server closes.
func (s *Server) readLive() {
	f := &s.live
	defer f.wg.Done()
	ctx := s.cache.ctx
	t := time.NewTicker(LiveEvery)
	defer t.Stop()
	var last db.UILiveSignatureRow
	first := true
	for {
		f.mu.Lock()
		if len(f.listeners) == 0 || ctx.Err() != nil {
			f.running = false
			f.mu.Unlock()
			return
		}
		f.mu.Unlock()
		var sig db.UILiveSignatureRow
		err := s.tx(ctx, func(q *db.Queries) (err error) {
			sig, err = q.UILiveSignature(ctx)
			return err
		})
		switch {
		case err != nil:
			if ctx.Err() == nil {
				s.log.Warn("status page: read the live signature", zap.Error(err))
			}
		case first:
			last, first = sig, false
		case sig != last:
			last = sig
			f.mu.Lock()
			for ch := range f.listeners {
				select {
				case ch <- struct{}{}:
				default: // one pending change is enough
				}
			}
			f.mu.Unlock()
		}
		select {
		case <-ctx.Done():
		case <-t.C:
		}
	}
}

// uiEvents is the event stream of a signed-in page.
func (s *Server) uiEvents(w http.ResponseWriter, r *http.Request) {
	if _, err := s.cookieAuth(r, ScopeRead); err != nil {
		http.Error(w, "sign in at /ui/login", http.StatusUnauthorized)
		return
	}
	rc := http.NewResponseController(w)
	_ = rc.SetWriteDeadline(time.Time{}) // a stream outlives the server's write timeout
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Accel-Buffering", "no")
	changes, stop := s.listen()
	defer stop()
	send := func(format string, args ...any) bool {
		if _, err := fmt.Fprintf(w, format, args...); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	if !send("retry: 5000\n: listening\n\n") {
		return
	}
	keep := time.NewTicker(liveKeepAlive)
	defer keep.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-s.cache.ctx.Done():
			return
		case <-changes:
			if !send("event: change\ndata: %d\n\n", time.Now().Unix()) {
				return
			}
		case <-keep.C:
			if !send(": keep-alive\n\n") {
				return
			}
		}
	}
}
