package submit

import (
	"context"
	"sync"

	"github.com/baton-scheduler/baton/db"
)

// Waker sends the NOTIFY that wakes a group's workers after a submit committed,
// sharing one NOTIFY among the concurrent submits of a group, as group commit
// shares a WAL flush. Each NOTIFY costs Postgres a transaction id, a commit under
// a cluster-wide lock, a signal to every listening backend and a claim attempt
// by every worker of the group; at thousands of single-task submits a second
// those wake-ups, not the inserts, were most of the server's work.
//
// The rule: Wake returns once a NOTIFY for each group has been sent that started
// after Wake was called, so it covers every task the caller committed before.
// A caller that finds a NOTIFY of its group in flight waits for it to end and
// for the next one, which it or another waiting caller sends: one NOTIFY then
// covers every submit that arrived while the previous one was in flight. A
// caller waits for at most two NOTIFYs and sends at most one. An idle group's
// submit sends its own at once, so coalescing adds no latency when there is
// nothing to share.
//
// A Waker is safe for concurrent use; its zero value is not: use NewWaker.
type Waker struct {
	send func(ctx context.Context, groups []string) // one NOTIFY statement

	mu     sync.Mutex
	groups map[string]*groupWake
}

type groupWake struct {
	busy    bool   // a NOTIFY of this group is being sent
	started uint64 // NOTIFYs started
	done    uint64 // the latest NOTIFY ended; every earlier one has
	// ended is closed and replaced each time a NOTIFY ends.
	ended chan struct{}
}

// NewWaker returns a Waker that notifies through q (a pool, not a transaction:
// the NOTIFY must commit on its own, after the submit's commit).
func NewWaker(q *db.Queries) *Waker {
	return &Waker{send: func(ctx context.Context, groups []string) { Wake(ctx, q, groups) }, groups: map[string]*groupWake{}}
}

// Wake wakes the workers of groups (see Waker). Best effort: a failed NOTIFY is
// not reported (the tasks are stored; workers claim them on their poll), and a
// canceled ctx returns at once.
func (w *Waker) Wake(ctx context.Context, groups []string) {
	for _, g := range groups {
		if !w.wakeGroup(ctx, g) {
			return
		}
	}
}

// wakeGroup returns false if ctx ended first.
func (w *Waker) wakeGroup(ctx context.Context, group string) bool {
	w.mu.Lock()
	s := w.groups[group]
	if s == nil {
		s = &groupWake{ended: make(chan struct{})}
		w.groups[group] = s
	}
	// Any NOTIFY that starts from now on covers this caller's commit.
	need := s.started + 1
	for s.done < need {
		if !s.busy {
			s.busy = true
			s.started++
			seq := s.started
			w.mu.Unlock()
			w.send(ctx, []string{group})
			w.mu.Lock()
			s.busy = false
			s.done = seq
			close(s.ended)
			s.ended = make(chan struct{})
			continue
		}
		ended := s.ended
		w.mu.Unlock()
		select {
		case <-ended:
		case <-ctx.Done():
			return false
		}
		w.mu.Lock()
	}
	w.mu.Unlock()
	return true
}
