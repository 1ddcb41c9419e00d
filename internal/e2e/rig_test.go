package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/url"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/baton-scheduler/baton/batontest"
	"github.com/baton-scheduler/baton/internal/chaos"
	"github.com/baton-scheduler/baton/internal/submit"
)

// rig is a supervised deployment for the Postgres and fault-campaign tests: masters
// and workers as real processes, restarted (like systemd would) when they die
// unless stopped on purpose; each worker reaches Postgres through its own proxies
// (one per Postgres node) so it can be partitioned alone; one or two Postgres nodes
// from the host binaries (or the shared test server when there are none).
type rig struct {
	t      *testing.T
	bins   Binaries
	logDir string

	nodes   []*PGNode // host Postgres nodes; nodes[primary] accepts writes
	primary int
	dsn     string // what masters, the ledger and the test use (multi-host when 2 nodes)
	pool    *pgxpool.Pool

	mu      sync.Mutex
	masters []*member
	workers []*member
	stopped chan struct{}
	wg      sync.WaitGroup
}

// member is one supervised process slot.
type member struct {
	name, group string
	master      bool
	bin         string
	args        []string
	proxies     []*batontest.Proxy
	proc        *Proc
	held        bool // deliberately down: the supervisor leaves it
	starts      int  // processes started in this slot
	startErr    error
}

// rigConfig shapes a rig.
type rigConfig struct {
	masters    int
	groups     []string
	perGroup   int // workers per group
	slots      int
	replica    bool   // start a streaming replica and use a multi-host DSN
	workerBin  string // default: Binaries.ChaosWorker
	workerArgs []string
	masterArgs []string
}

// newRigOnHost starts Postgres from the host binaries (primary, and a replica when
// cfg.replica) and the processes.
func newRigOnHost(t *testing.T, binDir string, cfg rigConfig) *rig {
	t.Helper()
	r := &rig{t: t, bins: Build(t), logDir: t.TempDir(), stopped: make(chan struct{})}
	p := StartPrimary(t, binDir, "pg1")
	r.nodes = []*PGNode{p}
	if cfg.replica {
		rep := StartReplica(t, p, "pg2")
		r.nodes = append(r.nodes, rep)
	}
	var hps []string
	for _, n := range r.nodes {
		hps = append(hps, n.HostPort())
	}
	r.dsn = MultiHostDSN("baton", hps...)
	r.start(cfg)
	return r
}

// newRigOnServer uses a fresh database of the shared test server (no Postgres
// faults possible).
func newRigOnServer(t *testing.T, cfg rigConfig) *rig {
	t.Helper()
	r := &rig{t: t, bins: Build(t), logDir: t.TempDir(), stopped: make(chan struct{})}
	r.dsn = srv.NewDatabase(t)
	r.start(cfg)
	return r
}

func (r *rig) start(cfg rigConfig) {
	t := r.t
	// Runs last: task processes that outlived their workers (the zombies the
	// campaign looks for) must not outlive the test.
	t.Cleanup(func() { killStray(r.bins.Ledger) })
	pcfg, err := pgxpool.ParseConfig(r.dsn)
	if err != nil {
		t.Fatal(err)
	}
	pcfg.MaxConns = 8
	pcfg.ConnConfig.ConnectTimeout = 5 * time.Second
	r.pool, err = pgxpool.NewWithConfig(context.Background(), pcfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.pool.Close)
	r.exec(chaos.LedgerSchema)
	r.exec(chaos.FaultsSchema)
	if cfg.workerBin == "" {
		cfg.workerBin = r.bins.ChaosWorker
	}
	for i := range cfg.masters {
		name := fmt.Sprintf("m%d", i+1)
		r.masters = append(r.masters, &member{name: name, master: true, bin: r.bins.Master,
			args: MasterArgs(r.dsn, name, cfg.masterArgs...)})
	}
	for gi, g := range cfg.groups {
		for i := range cfg.perGroup {
			name := fmt.Sprintf("w%d%c", i+1, 'a'+gi)
			m := &member{name: name, group: g, bin: cfg.workerBin}
			var dsn string
			if len(r.nodes) > 0 {
				// One proxy per node, the worker given all of them (multi-host).
				var hps []string
				for _, n := range r.nodes {
					px, pdsn := batontest.NewProxy(t, n.DSN("baton"))
					m.proxies = append(m.proxies, px)
					u, err := url.Parse(pdsn)
					if err != nil {
						t.Fatal(err)
					}
					hps = append(hps, u.Host)
				}
				dsn = MultiHostDSN("baton", hps...)
			} else {
				px, pdsn := batontest.NewProxy(t, r.dsn)
				m.proxies = append(m.proxies, px)
				dsn = pdsn
			}
			m.args = WorkerArgs(dsn, name, g, cfg.slots, cfg.workerArgs...)
			r.workers = append(r.workers, m)
		}
	}
	for _, m := range r.all() {
		r.launch(m)
	}
	r.wg.Add(1)
	go r.supervise()
	t.Cleanup(r.shutdown)
}

// shutdown stops supervising and kills every process (tails of their logs are
// logged when the test failed). Tests call it before their final checks too.
func (r *rig) shutdown() {
	select {
	case <-r.stopped:
		return
	default:
		close(r.stopped)
	}
	r.wg.Wait()
	for _, m := range r.all() {
		if p := r.proc(m); p != nil {
			p.stop(r.t.Failed())
		}
	}
}

func (r *rig) all() []*member {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append(append([]*member(nil), r.masters...), r.workers...)
}

// launch starts m's process (the caller holds no lock).
func (r *rig) launch(m *member) {
	select {
	case <-r.stopped:
		return
	default:
	}
	p, err := startProc(r.t, r.logDir, m.name, m.bin, m.args)
	r.mu.Lock()
	defer r.mu.Unlock()
	m.startErr = err
	if err == nil {
		m.proc = p
		m.starts++
	}
}

// supervise restarts every process that exited unless it is held, as a service
// manager would (a worker started while Postgres is down exits at once and is
// started again a moment later).
func (r *rig) supervise() {
	defer r.wg.Done()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-r.stopped:
			return
		case <-tick.C:
		}
		for _, m := range r.all() {
			r.mu.Lock()
			dead := !m.held && (m.proc == nil || m.proc.Exited())
			r.mu.Unlock()
			if dead {
				r.launch(m)
			}
		}
	}
}

// hold keeps the supervisor from restarting m (true) or lets it (false).
func (r *rig) hold(m *member, held bool) {
	r.mu.Lock()
	m.held = held
	r.mu.Unlock()
}

func (r *rig) proc(m *member) *Proc {
	r.mu.Lock()
	defer r.mu.Unlock()
	return m.proc
}

// restarts is how many times processes had to be started again (0: none died).
func (r *rig) restarts() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, m := range append(append([]*member(nil), r.masters...), r.workers...) {
		if m.starts > 1 {
			n += m.starts - 1
		}
	}
	return n
}

func (r *rig) exec(sql string, args ...any) {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := chaos.Retry(ctx, func(ctx context.Context) error {
		_, err := r.pool.Exec(ctx, sql, args...)
		return err
	}); err != nil {
		r.t.Fatalf("e2e: %s: %v", sql, err)
	}
}

// tryInt runs a one-integer query once (errors are returned: Postgres may be away).
func (r *rig) tryInt(sql string, args ...any) (int64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var v int64
	err := r.pool.QueryRow(ctx, sql, args...).Scan(&v)
	return v, err
}

// waitFor polls cond (query errors count as "not yet") until it holds or timeout
// passes; it returns the last description and whether cond held.
func (r *rig) waitFor(timeout time.Duration, cond func() (bool, string, error)) (bool, string) {
	deadline := time.Now().Add(timeout)
	var desc string
	for {
		ok, d, err := cond()
		if err != nil {
			d = "query: " + err.Error()
		}
		desc = d
		if err == nil && ok {
			return true, desc
		}
		if time.Now().After(deadline) {
			return false, desc
		}
		select {
		case <-r.stopped:
			return false, desc + " (rig stopped)"
		case <-time.After(PollInterval):
		}
	}
}

// mustWait is waitFor that fails the test on timeout.
func (r *rig) mustWait(timeout time.Duration, what string, cond func() (bool, string, error)) {
	r.t.Helper()
	if ok, desc := r.waitFor(timeout, cond); !ok {
		r.t.Fatalf("e2e: %s not reached within %s: %s", what, timeout, desc)
	}
}

// whole reports whether the cluster is whole again: every process runs and has
// exactly one alive session, the one of its current pid, which heartbeated after
// since (sessions of killed processes have been declared dead); no failover event
// is open; and no active task sits on a session that is not alive.
func (r *rig) whole(since time.Time) (bool, string, error) {
	for _, m := range r.all() {
		r.mu.Lock()
		running := m.proc != nil && !m.proc.Exited()
		pid := 0
		if running {
			pid = m.proc.Pid()
		}
		r.mu.Unlock()
		if !running {
			return false, m.name + " is not running", nil
		}
		table := "worker_sessions"
		if m.master {
			table = "master_sessions"
		}
		var alive, current int64
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := r.pool.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE pid = $2 AND last_heartbeat_at > $3)
			FROM `+table+` WHERE name = $1 AND state = 'alive'`, m.name, pid, since).Scan(&alive, &current)
		cancel()
		if err != nil {
			return false, "", err
		}
		if alive != 1 || current != 1 {
			return false, fmt.Sprintf("%s (pid %d) has %d alive sessions, %d of them its own and heartbeating since %s",
				m.name, pid, alive, current, since.Format("15:04:05.000")), nil
		}
	}
	open, err := r.tryInt(`SELECT count(*) FROM failover_events WHERE finished_at IS NULL`)
	if err != nil || open > 0 {
		return false, fmt.Sprintf("%d failover events open", open), err
	}
	stuck, err := r.tryInt(`SELECT count(*) FROM tasks t JOIN worker_sessions s ON s.id = t.worker_session_id
		WHERE t.state IN ('dispatched', 'running') AND s.state <> 'alive'`)
	if err != nil || stuck > 0 {
		return false, fmt.Sprintf("%d active tasks on sessions not alive", stuck), err
	}
	return true, "whole", nil
}

// pgNow is Postgres' clock_timestamp() (the one clock every figure uses), retried
// for up to a minute while Postgres is away.
func (r *rig) pgNow() (time.Time, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var ts time.Time
	err := chaos.Retry(ctx, func(ctx context.Context) error {
		qctx, qcancel := context.WithTimeout(ctx, 5*time.Second)
		defer qcancel()
		return r.pool.QueryRow(qctx, `SELECT clock_timestamp()`).Scan(&ts)
	})
	return ts, err
}

// taskKind is what a submitted task does.
type taskKind int

const (
	shellTask  taskKind = iota // sh -> sh -> setsid ledger ticks (child and grandchild)
	goTask                     // the chaosworker "ledger" Go handler
	poisonTask                 // a shell task that kills its worker: kill -9 $BATON_WORKER_PID
	crashTask                  // a Go handler (chaosworker "crash") that crashes its worker
	gateTask                   // a shell task that finishes once a file exists (gateScript)
	stepTask                   // a step of a workflow run (shell or Go, made by the run)
)

func (k taskKind) String() string {
	return [...]string{"shell", "go", "poison", "crash", "gate", "step"}[k]
}

// gateScript records a start, waits until the file $GATE exists, and records its
// end: the test decides when it finishes (e.g. while its worker is frozen, so the
// worker has a late result to report).
const gateScript = `"$LEDGER" start && while [ ! -e "$GATE" ]; do sleep 0.05; done && "$LEDGER" end`

// gateSpec is a gateTask in group that finishes once gate exists.
func (r *rig) gateSpec(group, gate string) submit.Spec {
	payload, err := json.Marshal(map[string]any{"command": gateScript, "env": map[string]string{
		"LEDGER": r.bins.Ledger, "BATON_LEDGER_DSN": r.dsn, "GATE": gate,
	}})
	if err != nil {
		r.t.Fatal(err)
	}
	return submit.Spec{Group: group, Kind: submit.KindShell, Payload: payload, MaxRetries: 3}
}

// shellScript: the task shell records its start, runs a child shell that runs the
// ticking grandchild in a session of its own (setsid: out of the task's process
// group, as a daemonizing program would be), then records its end.
const shellScript = `"$LEDGER" start && sh -c 'setsid -w "$LEDGER" ticks "$TICKS" "$EVERY" & wait $!' && "$LEDGER" end`

// poisonScript records a start, then kills the worker running it (the worker
// process, not the task's supervisor, which is its $PPID).
const poisonScript = `"$LEDGER" start && kill -9 "$BATON_WORKER_PID"`

// tickEvery is the interval of ledger ticks.
const tickEvery = 250 * time.Millisecond

// spec builds one task: ticks ledger ticks tickEvery apart (shell, go), in group.
func (r *rig) spec(kind taskKind, group string, ticks int) submit.Spec {
	var payload []byte
	var err error
	switch kind {
	case shellTask, poisonTask:
		script := shellScript
		if kind == poisonTask {
			script = poisonScript
		}
		payload, err = json.Marshal(map[string]any{"command": script, "env": map[string]string{
			"LEDGER": r.bins.Ledger, "BATON_LEDGER_DSN": r.dsn,
			"TICKS": fmt.Sprint(ticks), "EVERY": tickEvery.String(),
		}})
	case goTask, crashTask:
		payload, err = json.Marshal(map[string]any{"dsn": r.dsn, "ticks": ticks, "tick_ms": tickEvery.Milliseconds()})
	}
	if err != nil {
		r.t.Fatal(err)
	}
	s := submit.Spec{Group: group, Kind: submit.KindShell, Payload: payload, MaxRetries: 3}
	switch kind {
	case goTask:
		s.Kind = "ledger"
	case crashTask:
		s.Kind = "crash"
	}
	return s
}

// submitted remembers the ids of tasks whose submission committed, by kind.
type submitted struct {
	mu     sync.Mutex
	ids    []int64
	byKind map[taskKind]int
}

func (s *submitted) add(kind taskKind, ids []int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.byKind == nil {
		s.byKind = map[taskKind]int{}
	}
	s.ids = append(s.ids, ids...)
	s.byKind[kind] += len(ids)
}

func (s *submitted) all() []int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]int64(nil), s.ids...)
}

// submitMany submits specs of one kind; an error (Postgres away) is returned and
// nothing is recorded (the submission may or may not have committed; such tasks are
// not counted as submitted).
func (r *rig) submitMany(sub *submitted, kind taskKind, specs []submit.Spec) error {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	ids, err := submit.Many(ctx, r.pool, specs)
	if err != nil {
		return err
	}
	sub.add(kind, ids)
	return nil
}

// randomLoad makes n specs: shell or Go tasks at random, spread over groups, each
// 2..maxTicks ticks.
func (r *rig) randomLoad(rng *rand.Rand, n, maxTicks int, groups []string) (shell, gotasks []submit.Spec) {
	for range n {
		g := groups[rng.IntN(len(groups))]
		ticks := 2 + rng.IntN(maxTicks-1)
		if rng.IntN(2) == 0 {
			shell = append(shell, r.spec(shellTask, g, ticks))
		} else {
			gotasks = append(gotasks, r.spec(goTask, g, ticks))
		}
	}
	return shell, gotasks
}

// waitTerminal waits until every submitted task is terminal (false on timeout).
func (r *rig) waitTerminal(sub *submitted, timeout time.Duration) (bool, string) {
	return r.waitFor(timeout, func() (bool, string, error) {
		ids := sub.all()
		n, err := r.tryInt(`SELECT count(*) FROM unnest($1::bigint[]) AS s(id) LEFT JOIN tasks t ON t.id = s.id
			WHERE t.id IS NULL OR t.state NOT IN ('succeeded', 'failed', 'timed_out', 'canceled')`, ids)
		return err == nil && n == 0, fmt.Sprintf("%d of %d submitted tasks not terminal", n, len(ids)), err
	})
}

// waitLedgerQuiet waits until nothing has written to the ledger for quiet: zombie
// processes of killed workers finish (or keep writing, which the checker then sees).
func (r *rig) waitLedgerQuiet(quiet, timeout time.Duration) (bool, string) {
	return r.waitFor(timeout, func() (bool, string, error) {
		var age float64
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		err := r.pool.QueryRow(ctx, `SELECT coalesce(extract(epoch FROM clock_timestamp() - max(at)), 1e9) FROM ledger`).Scan(&age)
		return err == nil && age >= quiet.Seconds(), fmt.Sprintf("last ledger write %.1fs ago", age), err
	})
}

// check runs the ledger checker.
func (r *rig) check(sub *submitted) chaos.Findings {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var f chaos.Findings
	if err := chaos.Retry(ctx, func(ctx context.Context) error {
		var err error
		f, err = chaos.Check(ctx, r.pool, sub.all())
		return err
	}); err != nil {
		r.t.Fatalf("e2e: ledger check: %v", err)
	}
	return f
}

// describe is Cluster.Describe for the rig (never fails).
func (r *rig) describe() string {
	c := &Cluster{T: r.t, Pool: r.pool}
	return c.Describe()
}

// signal sends sig to m's current process.
func (r *rig) signal(m *member, sig syscall.Signal) error {
	p := r.proc(m)
	if p == nil {
		return fmt.Errorf("%s has no process", m.name)
	}
	return p.SignalErr(sig)
}

// currentSession is the alive session of m's running process (by its pid),
// waiting up to 30 s for one (a process just restarted registers first).
func (r *rig) currentSession(m *member) (int64, error) {
	table := "worker_sessions"
	if m.master {
		table = "master_sessions"
	}
	var id int64
	ok, desc := r.waitFor(30*time.Second, func() (bool, string, error) {
		p := r.proc(m)
		if p == nil || p.Exited() {
			return false, m.name + " is not running", nil
		}
		var err error
		id, err = r.tryInt(`SELECT coalesce(max(id), 0) FROM `+table+` WHERE name = $1 AND pid = $2 AND state = 'alive'`, m.name, p.Pid())
		return err == nil && id > 0, m.name + " has no alive session of its process", err
	})
	if !ok {
		return 0, fmt.Errorf("session of %s: %s", m.name, desc)
	}
	return id, nil
}
