package baton

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/baton-scheduler/baton/internal/notify"
)

// waitHub shares one LISTEN connection among a client's Wait calls: it holds a
// connection of the pool while at least one Wait is in progress and for
// waitListenLinger after the last one returned (an application that submits and
// waits in a loop keeps one listener instead of opening a connection per Wait:
// the listener's connection is never handed back to the pool), and wakes
// the waiters of the tasks a notification names (all of them for "*", and when
// the listener (re)connects, since it may have missed some).
type waitHub struct {
	pool *pgxpool.Pool
	log  *zap.Logger

	mu      sync.Mutex
	waiters map[int64]map[notify.Signal]bool
	count   int
	stop    context.CancelFunc // the listener's; nil when none runs
	linger  *time.Timer        // stops the listener once idle for waitListenLinger
}

// waitListenLinger is how long the listener stays after the last Wait returned.
const waitListenLinger = time.Second

// add registers a waiter for task id; the returned func unregisters it.
func (h *waitHub) add(id int64) (notify.Signal, func()) {
	sig := notify.NewSignal()
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.waiters == nil {
		h.waiters = map[int64]map[notify.Signal]bool{}
	}
	if h.waiters[id] == nil {
		h.waiters[id] = map[notify.Signal]bool{}
	}
	h.waiters[id][sig] = true
	h.count++
	if h.linger != nil {
		h.linger.Stop()
		h.linger = nil
	}
	if h.stop == nil {
		ctx, cancel := context.WithCancel(context.Background())
		h.stop = cancel
		l := &notify.Listener{Pool: h.pool, Channels: []string{notify.ChannelFinished}, Logger: h.log, OnNotify: h.wake}
		go l.Run(ctx)
	}
	return sig, func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		delete(h.waiters[id], sig)
		if len(h.waiters[id]) == 0 {
			delete(h.waiters, id)
		}
		h.count--
		if h.count == 0 {
			var t *time.Timer
			t = time.AfterFunc(waitListenLinger, func() {
				h.mu.Lock()
				defer h.mu.Unlock()
				if h.linger == t && h.count == 0 {
					h.stop()
					h.stop, h.linger = nil, nil
				}
			})
			h.linger = t
		}
	}
}

// wake signals the waiters of the task ids in payload ("*": everyone).
func (h *waitHub) wake(_, payload string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if payload == "*" || payload == "" {
		for _, sigs := range h.waiters {
			for s := range sigs {
				s.Wake()
			}
		}
		return
	}
	for _, p := range strings.Split(payload, ",") {
		id, err := strconv.ParseInt(p, 10, 64)
		if err != nil {
			continue
		}
		for s := range h.waiters[id] {
			s.Wake()
		}
	}
}
