package baton

import (
	"context"
	"strconv"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/baton-scheduler/baton/internal/notify"
)

// waitHub shares one LISTEN connection among a client's Wait calls: it holds a
// connection of the pool only while at least one Wait is in progress, and wakes
// the waiters of the tasks a notification names (all of them for "*", and when
// the listener (re)connects, since it may have missed some).
type waitHub struct {
	pool *pgxpool.Pool
	log  *zap.Logger

	mu      sync.Mutex
	waiters map[int64]map[notify.Signal]bool
	count   int
	stop    context.CancelFunc
}

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
	if h.count == 1 {
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
			h.stop()
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
