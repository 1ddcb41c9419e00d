package master

import (
	"context"

	"github.com/baton-scheduler/baton/internal/notify"
	"github.com/baton-scheduler/baton/internal/service"
)

// listener turns NOTIFYs into wake-ups of the dispatcher and the worker sweeper.
// A NOTIFY only shortens a wait: both also poll.
type listener struct {
	service.Base
	service.StartStop
	m *Master
}

func (l *listener) Start(ctx context.Context) error {
	nl := &notify.Listener{Pool: l.m.pool, Channels: []string{notify.ChannelDispatch, notify.ChannelSweep}, Logger: l.Logger,
		OnNotify: func(ch, _ string) {
			if ch == notify.ChannelSweep {
				l.m.workerSweeper.wake.Wake()
			} else {
				l.m.dispatcher.wake.Wake()
			}
		}}
	l.StartLoop(ctx, nl.Run)
	return nil
}
