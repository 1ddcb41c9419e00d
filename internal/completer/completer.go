// Package completer is the worker's batching result writer: finished attempts are
// buffered and written in one statement per batch (report.Finish), flushed when
// the buffer reaches MaxBatch or FlushInterval after the first result arrived. The
// default interval is zero: a batch is whatever arrived while the previous batch
// was being written, which adds no latency (a slot is free in Postgres only once
// its result is written, so a tick would slow every task; measured: a 5 ms tick
// halved no-op throughput).
// When the backlog passes HighWater (Postgres slow or unreachable), Add blocks, so
// task goroutines keep their slots and the worker claims nothing new until the
// results are written. Stop makes a final flush under an un-cancelled, bounded
// context: a shutdown never drops a result it could still write.
//
// A result stays "pending" from Add until it is written (or dropped as fenced or
// unstorable): the claim loop's reconcile counts pending attempts as its own, so a
// finished-but-unwritten attempt is never taken for an orphaned claim.
package completer

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/baton-scheduler/baton/internal/executor"
	"github.com/baton-scheduler/baton/internal/logfield"
	"github.com/baton-scheduler/baton/internal/metrics"
	"github.com/baton-scheduler/baton/internal/report"
	"github.com/baton-scheduler/baton/internal/service"
	"github.com/baton-scheduler/baton/internal/store"
)

// Defaults.
const (
	MaxBatchDefault      = 1000
	FlushIntervalDefault = 0 // flush as soon as the writer is free
	HighWaterDefault     = 4096
	// WriteTimeoutDefault bounds one batch write (a hung connection cannot stall
	// the writer).
	WriteTimeoutDefault = 10 * time.Second
	// FinalFlushTimeoutDefault bounds the flush at Stop; whatever is still
	// unwritten then is handed back by failover and runs again.
	FinalFlushTimeoutDefault = 5 * time.Second
)

// Config of a Completer.
type Config struct {
	MaxBatch          int           // flush when this many results are buffered
	FlushInterval     time.Duration // flush this long after the first buffered result (0: at once)
	HighWater         int           // Add blocks while this many results are pending
	WriteTimeout      time.Duration
	FinalFlushTimeout time.Duration
	Metrics           *metrics.Worker // if set, counts refused (fenced) results
}

func (c Config) withDefaults() Config {
	if c.MaxBatch <= 0 {
		c.MaxBatch = MaxBatchDefault
	}
	if c.HighWater <= 0 {
		c.HighWater = HighWaterDefault
	}
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = WriteTimeoutDefault
	}
	if c.FinalFlushTimeout <= 0 {
		c.FinalFlushTimeout = FinalFlushTimeoutDefault
	}
	return c
}

// Flushed is what one runOnce did.
type Flushed struct {
	Written int // results applied
	Fenced  int // refused: the attempt was superseded
	Dropped int // could not be stored at all
}

// TestSignals are sent after meaningful steps (tests only).
type TestSignals struct {
	Added       service.TestSignal[report.Key] // a result was buffered
	Flushed     service.TestSignal[Flushed]    // a batch was written
	FlushFailed service.TestSignal[error]      // a batch write failed (will retry)
	BackPressed service.TestSignal[int]        // Add blocked at the high-water mark (pending count)
}

// Completer buffers and writes results.
type Completer struct {
	service.Base
	service.StartStop
	TestSignals TestSignals

	cfg  Config
	pool *pgxpool.Pool

	urgent atomic.Int32 // WaitIdle callers: flush without waiting for the interval

	mu      sync.Mutex
	buf     []report.Result
	pending map[report.Key]bool // Added and not yet written or dropped
	arrived chan struct{}
	drained *sync.Cond // broadcast when pending shrinks
}

// New returns a Completer writing to pool.
func New(base service.Base, pool *pgxpool.Pool, cfg Config) *Completer {
	c := &Completer{Base: base, cfg: cfg.withDefaults(), pool: pool, pending: map[report.Key]bool{}, arrived: make(chan struct{}, 1)}
	c.drained = sync.NewCond(&c.mu)
	return c
}

// Add buffers r. It blocks while the backlog is at the high-water mark, or until
// ctx is done (then the result is dropped and false returned: its attempt is
// handed back by failover).
func (c *Completer) Add(ctx context.Context, r report.Result) bool {
	c.mu.Lock()
	if len(c.pending) >= c.cfg.HighWater {
		c.TestSignals.BackPressed.Signal(len(c.pending))
		stop := context.AfterFunc(ctx, func() { c.mu.Lock(); c.drained.Broadcast(); c.mu.Unlock() })
		for len(c.pending) >= c.cfg.HighWater && ctx.Err() == nil {
			c.drained.Wait()
		}
		stop()
		if ctx.Err() != nil {
			c.mu.Unlock()
			return false
		}
	}
	c.buf = append(c.buf, r)
	c.pending[r.Key()] = true
	c.mu.Unlock()
	c.TestSignals.Added.Signal(r.Key())
	select {
	case c.arrived <- struct{}{}:
	default:
	}
	return true
}

// Pending returns the attempts whose results are buffered or being written.
func (c *Completer) Pending() map[report.Key]bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[report.Key]bool, len(c.pending))
	for k := range c.pending {
		out[k] = true
	}
	return out
}

// PendingCount is the number of results not yet written.
func (c *Completer) PendingCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.pending)
}

// WaitIdle flushes at once and waits until every result added so far is written
// (or dropped), or ctx ends; it reports whether nothing is pending.
func (c *Completer) WaitIdle(ctx context.Context) bool {
	c.urgent.Add(1)
	defer c.urgent.Add(-1)
	select {
	case c.arrived <- struct{}{}:
	default:
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	stop := context.AfterFunc(ctx, func() { c.mu.Lock(); c.drained.Broadcast(); c.mu.Unlock() })
	defer stop()
	for len(c.pending) > 0 && ctx.Err() == nil {
		c.drained.Wait()
	}
	return len(c.pending) == 0
}

// Start runs the flush loop until Stop (or ctx ends), then flushes what is left
// under a fresh bounded context.
func (c *Completer) Start(ctx context.Context) error {
	c.StartLoop(ctx, c.loop)
	return nil
}

func (c *Completer) loop(ctx context.Context) {
	backoff := service.Backoff{Min: 50 * time.Millisecond, Max: 2 * time.Second}
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	armed := false
	for {
		if n := c.bufLen(); n >= c.cfg.MaxBatch || (n > 0 && (c.cfg.FlushInterval <= 0 || c.urgent.Load() > 0)) {
			// size reached, or someone waits for the results: flush now
		} else {
			if !armed && c.bufLen() > 0 {
				timer.Reset(c.cfg.FlushInterval)
				armed = true
			}
			select {
			case <-ctx.Done():
				c.finalFlush(ctx)
				return
			case <-c.arrived:
				continue
			case <-timer.C:
			}
		}
		armed = false
		if _, err := c.runOnce(ctx); err != nil {
			if ctx.Err() != nil {
				c.finalFlush(ctx)
				return
			}
			c.Logger.Warn("report results failed; retrying", logfield.BatchSize(c.bufLen()), zap.Error(err))
			c.TestSignals.FlushFailed.Signal(err)
			if !service.Sleep(ctx, backoff.Next()) {
				c.finalFlush(ctx)
				return
			}
			continue
		}
		backoff.Reset()
	}
}

func (c *Completer) bufLen() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.buf)
}

// finalFlush keeps writing for FinalFlushTimeout after Stop, even though the
// loop's context is canceled; what cannot be written then is dropped (its tasks
// are handed back by failover and run again).
func (c *Completer) finalFlush(ctx context.Context) {
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.FinalFlushTimeout)
	defer cancel()
	backoff := service.Backoff{Min: 50 * time.Millisecond, Max: time.Second}
	for c.bufLen() > 0 {
		if _, err := c.runOnce(fctx); err == nil {
			backoff.Reset()
			continue
		}
		if !service.Sleep(fctx, backoff.Next()) {
			break
		}
	}
	c.mu.Lock()
	n := len(c.buf)
	for _, r := range c.buf {
		delete(c.pending, r.Key())
	}
	c.buf = nil
	c.drained.Broadcast()
	c.mu.Unlock()
	if n > 0 {
		c.Logger.Error("giving up reporting results at shutdown; their tasks will be handed back and run again", logfield.BatchSize(n))
	}
}

// runOnce writes up to MaxBatch buffered results in one statement. A batch
// Postgres rejects for its data is written one result at a time. On a connection
// error the batch stays buffered (at its head) for the next try.
func (c *Completer) runOnce(ctx context.Context) (Flushed, error) {
	c.mu.Lock()
	n := min(len(c.buf), c.cfg.MaxBatch)
	batch := append([]report.Result(nil), c.buf[:n]...)
	c.mu.Unlock()
	var f Flushed
	if n == 0 {
		return f, nil
	}
	sum, err := c.finish(ctx, batch)
	if err != nil && permanent(err) {
		c.Logger.Error("report results rejected; writing them one by one", logfield.BatchSize(len(batch)), zap.Error(err))
		sum, f.Dropped, err = c.finishOneByOne(ctx, batch)
	}
	if err != nil {
		return Flushed{}, err
	}
	f.Written, f.Fenced = len(sum.Applied), len(sum.Fenced)
	c.cfg.Metrics.ResultsFenced(f.Fenced)
	for _, fr := range sum.Fenced {
		c.Logger.Warn("result refused: attempt superseded (fenced)", logfield.TaskID(fr.TaskID),
			logfield.Attempt(fr.Attempt), logfield.SessionID(fr.SessionID), logfield.Outcome(fr.Outcome))
	}
	for _, r := range batch {
		if st, ok := sum.Applied[r.TaskID]; ok {
			c.Logger.Debug("task finished", logfield.TaskID(r.TaskID), logfield.Attempt(r.Attempt),
				logfield.SessionID(r.SessionID), logfield.Outcome(r.Outcome), zap.String("task_state", st))
		}
	}
	c.mu.Lock()
	c.buf = c.buf[n:]
	if len(c.buf) == 0 {
		c.buf = nil // let the backing array go
	}
	for _, r := range batch {
		delete(c.pending, r.Key())
	}
	c.drained.Broadcast()
	c.mu.Unlock()
	c.TestSignals.Flushed.Signal(f)
	return f, nil
}

func (c *Completer) finish(ctx context.Context, batch []report.Result) (report.Summary, error) {
	return service.WithTimeout(ctx, c.cfg.WriteTimeout, func(ctx context.Context) (report.Summary, error) {
		return report.Finish(ctx, c.pool, batch)
	})
}

// permanent reports whether a write failed because of its data (SQLSTATE classes
// 22 data exception, 23 constraint, 42 syntax/access) rather than the connection.
func permanent(err error) bool {
	code := store.Code(err)
	return len(code) == 5 && (code[:2] == "22" || code[:2] == "23" || code[:2] == "42")
}

// finishOneByOne writes each result alone; a result that still cannot be written is
// replaced by a failure naming why, so its task ends instead of hanging.
func (c *Completer) finishOneByOne(ctx context.Context, batch []report.Result) (report.Summary, int, error) {
	all := report.Summary{Applied: map[int64]string{}}
	dropped := 0
	for _, r := range batch {
		sum, err := c.finish(ctx, []report.Result{r})
		if err != nil && permanent(err) {
			c.Logger.Error("result cannot be stored; recording a failure instead", logfield.TaskID(r.TaskID),
				logfield.Attempt(r.Attempt), zap.Error(err))
			r.Outcome, r.Output, r.StepOutputs = executor.OutcomeFailed, "", ""
			r.Error = executor.Clean(fmt.Sprintf("result could not be stored: %v", err))
			sum, err = c.finish(ctx, []report.Result{r})
		}
		if err != nil && !permanent(err) {
			return all, 0, err // connection trouble: retry the whole batch later
		}
		if err != nil {
			dropped++
			c.Logger.Error("dropping a result that cannot be stored", logfield.TaskID(r.TaskID), logfield.Attempt(r.Attempt), zap.Error(err))
		}
		for id, st := range sum.Applied {
			all.Applied[id] = st
		}
		all.Fenced = append(all.Fenced, sum.Fenced...)
	}
	return all, dropped, nil
}
