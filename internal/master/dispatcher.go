package master

import (
	"context"

	"go.uber.org/zap"

	"github.com/baton-scheduler/baton/internal/dispatch"
	"github.com/baton-scheduler/baton/internal/logfield"
	"github.com/baton-scheduler/baton/internal/notify"
	"github.com/baton-scheduler/baton/internal/service"
)

// dispatcher points waiting tasks at healthy workers with free slots. Woken by
// NOTIFY (submit, freed slots) and by a polling fallback; it runs again at once
// while it finds work.
type dispatcher struct {
	service.Base
	service.StartStop
	m           *Master
	wake        notify.Signal
	TestSignals dispatcherTestSignals
}

type dispatcherTestSignals struct {
	Dispatched service.TestSignal[int]
}

func (d *dispatcher) Start(ctx context.Context) error {
	d.StartLoop(ctx, func(ctx context.Context) {
		loop(ctx, d.m.cfg.DispatchInterval, d.wake, func(ctx context.Context) bool {
			n, err := d.runOnce(ctx)
			if err != nil && !quiet(ctx, err) {
				d.Logger.Warn("dispatch", zap.Error(err))
			}
			d.TestSignals.Dispatched.Signal(n)
			return n > 0 // more may be waiting
		})
	})
	return nil
}

// runOnce dispatches what it can in every group; it returns how many tasks.
func (d *dispatcher) runOnce(ctx context.Context) (int, error) {
	disp := dispatch.Dispatcher{Pool: d.m.pool, WorkerTimeout: d.m.cfg.WorkerTimeout, GroupTimeout: d.m.cfg.TxTimeout, Now: d.Clock.NowOrNil(),
		MinWait: d.m.cfg.DispatchMinWait}
	n, err := disp.RunOnce(ctx)
	if n > 0 {
		d.Logger.Debug("dispatched", logfield.Count("tasks", n))
	}
	return n, err
}
