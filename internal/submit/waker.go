package submit

import (
	"context"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/baton-scheduler/baton/db"
)

// Waker sends the NOTIFY that wakes a group's workers after a submit committed,
// in the background and shared among concurrent submits, as group commit shares
// a WAL flush. Each NOTIFY costs Postgres a transaction id, a commit under a
// cluster-wide lock, a signal to every listening backend and a claim attempt by
// every worker of the group; at thousands of single-task submits a second those
// wake-ups, not the inserts, were most of the server's work, and waiting for
// them doubled each submit's round trips.
//
// Wake records the groups and returns. One goroutine at a time sends: it takes
// every group recorded so far and sends one NOTIFY statement for all of them,
// and repeats while more were recorded meanwhile, then ends. So every Wake is
// followed by a NOTIFY of its groups that was sent after Wake was called (after
// the caller's commit), at most one statement in flight per Waker, and an idle
// Waker sends at once: coalescing adds no latency when there is nothing to
// share. Best effort, like every NOTIFY in baton: if the process exits first, or
// the statement fails, workers claim the tasks on their poll.
//
// A Waker is safe for concurrent use; its zero value is not: use NewWaker.
type Waker struct {
	send func(ctx context.Context, groups []string) // one NOTIFY statement

	mu      sync.Mutex
	pending map[string]bool
	sending bool // the sender goroutine runs
}

// wakeTimeout bounds one NOTIFY statement of the sender.
const wakeTimeout = 5 * time.Second

// NewWaker returns a Waker that notifies through q (a pool, not a transaction:
// the NOTIFY must commit on its own, after the submit's commit).
func NewWaker(q *db.Queries) *Waker {
	return &Waker{send: func(ctx context.Context, groups []string) { Wake(ctx, q, groups) }, pending: map[string]bool{}}
}

// Wake arranges for the workers of groups to be woken (see Waker); it does not
// wait for the NOTIFY.
func (w *Waker) Wake(groups []string) {
	if len(groups) == 0 {
		return
	}
	w.mu.Lock()
	for _, g := range groups {
		w.pending[g] = true
	}
	start := !w.sending
	w.sending = true
	w.mu.Unlock()
	if start {
		go w.run()
	}
}

func (w *Waker) run() {
	for {
		w.mu.Lock()
		if len(w.pending) == 0 {
			w.sending = false
			w.mu.Unlock()
			return
		}
		groups := slices.Sorted(maps.Keys(w.pending))
		clear(w.pending)
		w.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), wakeTimeout)
		w.send(ctx, groups)
		cancel()
	}
}

// idle reports whether nothing is pending or being sent (tests).
func (w *Waker) idle() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return !w.sending
}
