package master

import (
	"context"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/service"
	"github.com/baton-scheduler/baton/internal/state"
)

// heartbeater keeps the master's session alive; a master declared dead (it was cut
// off) registers a new session: masters own no tasks, so that is all it takes.
type heartbeater struct {
	service.Base
	service.StartStop
	m           *Master
	TestSignals heartbeatTestSignals
}

type heartbeatTestSignals struct {
	Beat service.TestSignal[heartbeatResult]
}

type heartbeatResult struct {
	State        string // the session's state as the heartbeat found it
	Reregistered bool
}

func (h *heartbeater) Start(ctx context.Context) error {
	h.StartLoop(ctx, func(ctx context.Context) {
		loop(ctx, h.m.cfg.HeartbeatInterval, nil, func(ctx context.Context) bool {
			res, err := h.runOnce(ctx)
			if err != nil && !quiet(ctx, err) {
				h.Logger.Warn("master heartbeat failed", zap.Error(err))
			}
			h.TestSignals.Beat.Signal(res)
			return false
		})
	})
	return nil
}

func (h *heartbeater) runOnce(ctx context.Context) (heartbeatResult, error) {
	sent := time.Now()
	st, err := service.WithTimeout(ctx, h.m.cfg.HeartbeatInterval, func(ctx context.Context) (string, error) {
		return db.New(h.m.pool).MasterSessionHeartbeat(ctx, h.m.SessionID())
	})
	if err != nil {
		return heartbeatResult{}, fmt.Errorf("heartbeat: %w", err)
	}
	h.m.cfg.Metrics.Heartbeat(time.Since(sent))
	res := heartbeatResult{State: st}
	if st != state.SessionAlive {
		h.Logger.Warn("master session was declared dead; registering a new one")
		h.m.cfg.Metrics.SessionLost()
		if err := h.m.register(ctx); err != nil {
			return res, err
		}
		res.Reregistered = true
	}
	return res, nil
}
