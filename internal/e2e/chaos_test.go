package e2e

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/baton-scheduler/baton/batontest"
	"github.com/baton-scheduler/baton/internal/chaos"
	"github.com/baton-scheduler/baton/internal/contain"
	"github.com/baton-scheduler/baton/internal/submit"
)

// The fault campaign (docs/chaos.md). `make chaos` runs it for 10 minutes; `make
// test` runs the short default.
var (
	chaosDuration = flag.Duration("chaos.duration", 0, "how long the fault campaign injects faults (0: one round of every fault, the short form of make test)")
	chaosSeed     = flag.Uint64("chaos.seed", 0, "seed of the fault campaign (0: from the clock; the seed is printed)")
	chaosReport   = flag.String("chaos.report", "", "also write the campaign's table to this file")
)

// Fault kinds, in the order of the table.
const (
	fWorkerKill   = "worker SIGKILL"
	fWorkerStop   = "worker SIGSTOP/SIGCONT"
	fStall        = "silent partition (stall)"
	fCut          = "reset partition (cut)"
	fMasterKill   = "master SIGKILL"
	fPGRestart    = "postgres restart"
	fSwitchover   = "postgres switchover"
	fRollingTerm  = "rolling SIGTERM of workers"
	fPoison       = "poison task (kill -9 $PPID)"
	fGroupLock    = "held group dispatch lock"
	chaosGroupA   = "chaos-a"
	chaosGroupB   = "chaos-b"
	chaosMaxTicks = 48 // tasks run 0.5..12 s: some outlive the worker timeout
)

// noFault labels overlaps whose earlier attempt ran on a session that no injected
// fault targeted and no poison task ran on (a worker that left its session by itself).
const noFault = "(no fault aimed at that session)"

var faultOrder = []string{fWorkerKill, fWorkerStop, fStall, fCut, fMasterKill, fPGRestart, fSwitchover,
	fRollingTerm, fPoison, fGroupLock}

// campaign is one run of the fault campaign.
type campaign struct {
	t     *testing.T
	r     *rig
	rng   *rand.Rand
	seed  uint64
	long  bool // make chaos (holds and bounds of the long form)
	sub   submitted
	start time.Time

	unavailable map[string]string // fault kind -> why the machine cannot host it
	notes       []string          // environment remarks for the table
	stalled     []string          // group-lock faults during which another group's failover did not finish
	maxFailover bool              // baton-master has --max-failovers
	poisonIDs   []int64
	mu          sync.Mutex
}

// TestChaos is the fault campaign: real processes (2 masters, 2 groups of 2 workers
// with 3 slots), real Postgres (a primary and a streaming replica from the host
// binaries), a continuous load of shell and Go-handler tasks writing a ledger, and
// faults at random moments (seeded). At the end the ledger checker judges the run.
func TestChaos(t *testing.T) {
	seed := *chaosSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	c := &campaign{t: t, seed: seed, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		long: *chaosDuration >= 5*time.Minute, unavailable: map[string]string{}}
	t.Logf("chaos: seed %d (rerun with -chaos.seed=%d), duration %s", seed, seed, *chaosDuration)

	bins := Build(t)
	masterArgs := []string{}
	if flagSupported(bins.Master, "max-failovers") {
		c.maxFailover = true
		masterArgs = append(masterArgs, "--max-failovers", "3")
	} else {
		c.notes = append(c.notes, "baton-master has no --max-failovers flag (issue #6.6 not merged): poison tasks are not limited")
	}
	cfg := rigConfig{masters: 2, groups: []string{chaosGroupA, chaosGroupB}, perGroup: 2, slots: 3, replica: true,
		workerArgs: []string{"--shutdown-grace", "3s"}, masterArgs: masterArgs}
	if binDir, err := FindPGBinDir(); err == nil {
		c.r = newRigOnHost(t, binDir, cfg)
		c.notes = append(c.notes, "postgres: primary + streaming replica from "+binDir+"; clients use a multi-host DSN")
	} else {
		why := "no host Postgres server binaries: " + err.Error()
		c.unavailable[fPGRestart] = why
		c.unavailable[fSwitchover] = why
		c.r = newRigOnServer(t, cfg)
		c.notes = append(c.notes, "postgres: the shared test server (no Postgres faults possible)")
	}
	c.notes = append(c.notes, cgroupNote())
	r := c.r
	r.mustWait(readyTimeout, "cluster ready", func() (bool, string, error) { return r.whole(time.Time{}) })

	loadCtx, stopLoad := context.WithCancel(context.Background())
	var loadDone sync.WaitGroup
	loadDone.Add(1)
	go func() { defer loadDone.Done(); c.load(loadCtx) }()

	var err error
	if c.start, err = r.pgNow(); err != nil {
		t.Fatal(err)
	}
	// Rounds of every available fault in a random order; the first round always
	// completes (the short form is one round), later ones stop at the deadline.
	deadline := time.Now().Add(*chaosDuration)
	for round := 0; round == 0 || time.Now().Before(deadline); round++ {
		kinds := c.available()
		c.rng.Shuffle(len(kinds), func(i, j int) { kinds[i], kinds[j] = kinds[j], kinds[i] })
		for _, k := range kinds {
			if round > 0 && !time.Now().Before(deadline) {
				break
			}
			if c.long {
				c.pause(time.Second, 5*time.Second)
			} else {
				c.pause(300*time.Millisecond, 1500*time.Millisecond)
			}
			c.inject(k)
		}
	}
	stopLoad()
	loadDone.Wait()

	drain := 30 * time.Second
	if c.long {
		drain = 3 * time.Minute
	}
	if ok, desc := r.waitTerminal(&c.sub, drain); !ok {
		t.Logf("chaos: not every task terminal %s after the last fault: %s", drain, desc)
	}
	if ok, desc := r.waitLedgerQuiet(5*time.Second, 30*time.Second); !ok {
		t.Logf("chaos: ledger still written to: %s", desc)
	}
	f := r.check(&c.sub)
	table := c.table(f)
	t.Log("\n" + table)
	if *chaosReport != "" {
		if err := os.WriteFile(*chaosReport, []byte(table), 0o644); err != nil {
			t.Errorf("chaos: write report: %v", err)
		}
	}
	if s := f.String(); s != "" {
		t.Errorf("chaos: the ledger check found:\n%s", s)
	}
	if len(c.stalled) > 0 {
		t.Errorf("chaos: a held group dispatch lock stalled another group's failover:\n  %s", strings.Join(c.stalled, "\n  "))
	}
	if n := c.unrecovered(); n > 0 {
		t.Errorf("chaos: %d faults after which the cluster was not whole again within the bound (see the table)", n)
	}
	if batontest.InCI() {
		for k, why := range c.unavailable {
			t.Errorf("chaos: CI=true and fault %q cannot run here: %s", k, why)
		}
	}
	if t.Failed() {
		t.Logf("database state:\n%s", r.describe())
	}
	r.shutdown()
}

// available are the fault kinds this machine can host.
func (c *campaign) available() []string {
	var out []string
	for _, k := range faultOrder {
		if _, no := c.unavailable[k]; !no {
			out = append(out, k)
		}
	}
	return out
}

// pause sleeps a random time in [lo, hi): the gap between faults (faults land at
// random moments of the load).
func (c *campaign) pause(lo, hi time.Duration) {
	time.Sleep(lo + time.Duration(c.rng.Int64N(int64(hi-lo))))
}

// hold is how long a fault lasts: sometimes shorter than the self-fence (4 s) and
// the worker timeout (5 s), sometimes well past both.
func (c *campaign) hold() time.Duration {
	hi := 6 * time.Second
	if c.long {
		hi = 14 * time.Second
	}
	return 2*time.Second + time.Duration(c.rng.Int64N(int64(hi-2*time.Second)))
}

// load keeps about two tasks per slot queued or running, half shell, half Go.
func (c *campaign) load(ctx context.Context) {
	r := c.r
	target := int64(2 * 4 * 3)
	lrng := rand.New(rand.NewPCG(c.seed+1, 7))
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(300 * time.Millisecond):
		}
		active, err := r.tryInt(`SELECT count(*) FROM tasks WHERE state IN ('queued', 'dispatched', 'running')`)
		if err != nil || active >= target {
			continue
		}
		shell, gotasks := r.randomLoad(lrng, int(target-active), chaosMaxTicks, []string{chaosGroupA, chaosGroupB})
		_ = r.submitMany(&c.sub, shellTask, shell) // Postgres away: try again next round
		_ = r.submitMany(&c.sub, goTask, gotasks)
	}
}

// inject runs one fault, records it in chaos_faults and waits (bounded) until the
// cluster is whole again.
func (c *campaign) inject(kind string) {
	r, t := c.r, c.t
	var id int64
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := chaos.Retry(ctx, func(ctx context.Context) error {
		return r.pool.QueryRow(ctx, `INSERT INTO chaos_faults (kind) VALUES ($1) RETURNING id`, kind).Scan(&id)
	}); err != nil {
		t.Errorf("chaos: record fault %s: %v", kind, err)
		return
	}
	target, session, extra, err := c.run(kind)
	note := extra
	if err != nil {
		note = strings.TrimSpace(note + " error: " + err.Error())
		t.Logf("chaos: fault %s on %s: %v", kind, target, err)
	}
	var healed time.Time
	if err := chaos.Retry(ctx, func(ctx context.Context) error {
		return r.pool.QueryRow(ctx, `UPDATE chaos_faults SET healed_at = clock_timestamp(), target = $2,
			target_session = nullif($3, 0), note = $4 WHERE id = $1 RETURNING healed_at`, id, target, session, note).Scan(&healed)
	}); err != nil {
		t.Errorf("chaos: record fault %s: %v", kind, err)
		return
	}
	bound := 20 * time.Second
	if c.long {
		bound = 90 * time.Second
	}
	if kind == fPoison {
		// The poison task kills a worker per failover allowed (3), each found dead
		// after the worker timeout (5 s), before it fails.
		bound = 60 * time.Second
		if c.long {
			bound = 2 * time.Minute
		}
	}
	ok, desc := r.waitFor(bound, func() (bool, string, error) {
		if kind == fPoison {
			// Recovered once the poison task is terminal (limited) and the cluster whole.
			n, err := r.tryInt(`SELECT count(*) FROM tasks WHERE id = (SELECT max(x) FROM unnest($1::bigint[]) x)
				AND state NOT IN ('succeeded', 'failed', 'timed_out', 'canceled')`, c.poisonList())
			if err != nil || n > 0 {
				return false, "poison task still active", err
			}
		}
		return r.whole(healed)
	})
	if ok {
		_ = chaos.Retry(ctx, func(ctx context.Context) error {
			_, err := r.pool.Exec(ctx, `UPDATE chaos_faults SET recovered_at = clock_timestamp() WHERE id = $1`, id)
			return err
		})
	} else {
		_ = chaos.Retry(ctx, func(ctx context.Context) error {
			_, err := r.pool.Exec(ctx, `UPDATE chaos_faults SET note = trim(note || ' not whole within ' || $2 || ': ' || $3) WHERE id = $1`,
				id, bound.String(), desc)
			return err
		})
	}
	t.Logf("chaos: %s on %s %s; whole again: %v (%s)", kind, target, note, ok, desc)
}

func (c *campaign) poisonList() []int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]int64(nil), c.poisonIDs...)
}

// pick is a random worker (of group g when g is not "").
func (c *campaign) pick(g string) *member {
	var ms []*member
	for _, m := range c.r.all() {
		if !m.master && (g == "" || m.group == g) {
			ms = append(ms, m)
		}
	}
	return ms[c.rng.IntN(len(ms))]
}

func (c *campaign) pickMaster() *member {
	var ms []*member
	for _, m := range c.r.all() {
		if m.master {
			ms = append(ms, m)
		}
	}
	return ms[c.rng.IntN(len(ms))]
}

// run injects one fault and heals it; it returns the target, the target's session
// (0 for none) and a note.
func (c *campaign) run(kind string) (target string, session int64, note string, err error) {
	r := c.r
	switch kind {
	case fWorkerKill:
		m := c.pick("")
		session = r.sessionOf(m)
		return m.name, session, "", r.signal(m, syscall.SIGKILL) // the supervisor restarts it
	case fWorkerStop:
		m := c.pick("")
		session = r.sessionOf(m)
		d := c.hold()
		if err := r.signal(m, syscall.SIGSTOP); err != nil {
			return m.name, session, "", err
		}
		time.Sleep(d)
		return m.name, session, "for " + d.String(), r.signal(m, syscall.SIGCONT)
	case fStall, fCut:
		m := c.pick("")
		session = r.sessionOf(m)
		d := c.hold()
		for _, p := range m.proxies {
			if kind == fStall {
				p.Stall()
			} else {
				p.Cut()
			}
		}
		time.Sleep(d)
		for _, p := range m.proxies {
			p.Restore()
		}
		return m.name, session, "for " + d.String(), nil
	case fMasterKill:
		m := c.pickMaster()
		return m.name, 0, "", r.signal(m, syscall.SIGKILL)
	case fPGRestart:
		mode := []string{"fast", "immediate"}[c.rng.IntN(2)]
		n := r.nodes[r.primary]
		return n.Name, 0, "-m " + mode, n.Restart(mode)
	case fSwitchover:
		from := r.nodes[r.primary].Name
		err := r.switchover()
		return from, 0, "to " + r.nodes[r.primary].Name, err
	case fRollingTerm:
		for _, m := range r.all() {
			if m.master {
				continue
			}
			if err := c.termOne(m); err != nil {
				return "all workers", 0, "", err
			}
		}
		return "all workers", 0, "", nil
	case fPoison:
		g := []string{chaosGroupA, chaosGroupB}[c.rng.IntN(2)]
		var sub submitted
		if err := r.submitMany(&sub, poisonTask, []submit.Spec{r.spec(poisonTask, g, 0)}); err != nil {
			return g, 0, "", err
		}
		c.sub.add(poisonTask, sub.ids)
		c.mu.Lock()
		c.poisonIDs = append(c.poisonIDs, sub.ids...)
		c.mu.Unlock()
		return g, 0, fmt.Sprintf("task %d", sub.ids[0]), nil
	case fGroupLock:
		return c.groupLock()
	}
	return "", 0, "", fmt.Errorf("unknown fault %q", kind)
}

// termOne sends SIGTERM to one worker, waits for it to exit, and lets the
// supervisor start it again; it returns once the new process has a session.
func (c *campaign) termOne(m *member) error {
	r := c.r
	r.hold(m, true)
	defer r.hold(m, false)
	p := r.proc(m)
	if p == nil || p.Exited() {
		return nil
	}
	before := r.sessionOf(m)
	if err := p.SignalErr(syscall.SIGTERM); err != nil {
		return err
	}
	select {
	case <-p.Done():
	case <-time.After(time.Minute):
		return fmt.Errorf("%s did not exit within a minute of SIGTERM", m.name)
	}
	r.hold(m, false)
	if ok, desc := r.waitFor(time.Minute, func() (bool, string, error) {
		n, err := r.tryInt(`SELECT count(*) FROM worker_sessions WHERE name = $1 AND id > $2 AND state = 'alive'`, m.name, before)
		return n > 0, m.name + " has no new session", err
	}); !ok {
		return fmt.Errorf("%s after SIGTERM: %s", m.name, desc)
	}
	return nil
}

// groupLock holds group A's dispatch lock in an open transaction, as a hung session
// would, and kills one worker of each group meanwhile: group B's failover must
// finish while A's lock is held.
func (c *campaign) groupLock() (string, int64, string, error) {
	r := c.r
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conn, err := r.pool.Acquire(ctx)
	if err != nil {
		return chaosGroupA, 0, "", err
	}
	defer conn.Release()
	tx, err := conn.Begin(ctx)
	if err != nil {
		return chaosGroupA, 0, "", err
	}
	defer tx.Rollback(context.Background()) //nolint:errcheck
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(1650524163, hashtext($1))`, chaosGroupA); err != nil {
		return chaosGroupA, 0, "", err
	}
	a, b := c.pick(chaosGroupA), c.pick(chaosGroupB)
	sa, sb := r.sessionOf(a), r.sessionOf(b)
	_ = r.signal(a, syscall.SIGKILL)
	_ = r.signal(b, syscall.SIGKILL)
	hold := 15 * time.Second
	ok, _ := r.waitFor(hold, func() (bool, string, error) {
		n, err := r.tryInt(`SELECT count(*) FROM failover_events WHERE kind = 'worker' AND session_id = $1 AND finished_at IS NOT NULL`, sb)
		return n > 0, "", err
	})
	note := fmt.Sprintf("killed %s (session %d) and %s (session %d)", a.name, sa, b.name, sb)
	if !ok {
		c.stalled = append(c.stalled, fmt.Sprintf("failover of %s session %d (group %s) not finished within %s while %s's lock was held",
			b.name, sb, chaosGroupB, hold, chaosGroupA))
		note += "; group B failover stalled"
	} else {
		note += "; group B failover finished under the lock"
	}
	time.Sleep(time.Duration(c.rng.Int64N(int64(3 * time.Second))))
	return chaosGroupA, sa, note, tx.Rollback(ctx)
}

// unrecovered counts faults after which the cluster did not become whole in time.
func (c *campaign) unrecovered() int64 {
	n, _ := c.r.tryInt(`SELECT count(*) FROM chaos_faults WHERE recovered_at IS NULL`)
	return n
}

// table renders the campaign's result.
func (c *campaign) table(f chaos.Findings) string {
	r := c.r
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	type row struct {
		n, unrec, overlaps int64
		longest            float64
	}
	rows := map[string]*row{}
	q, err := r.pool.Query(ctx, `
		SELECT kind, count(*), count(*) FILTER (WHERE recovered_at IS NULL),
		       coalesce(max(extract(epoch FROM recovered_at - started_at)), -1)
		FROM chaos_faults GROUP BY kind`)
	if err == nil {
		for q.Next() {
			var k string
			var x row
			if q.Scan(&k, &x.n, &x.unrec, &x.longest) == nil {
				rows[k] = &x
			}
		}
		q.Close()
	}
	// Overlaps attributed to the latest fault that targeted the earlier attempt's
	// session, else to a poison task that ran on it (and killed it).
	q, err = r.pool.Query(ctx, `
		WITH iv AS (SELECT task_id, attempt, min(session_id) AS session_id, min(at) AS first, max(at) AS last
		            FROM ledger GROUP BY task_id, attempt),
		     ov AS (SELECT a.session_id, b.first FROM iv a JOIN iv b ON a.task_id = b.task_id AND a.attempt < b.attempt
		            WHERE a.first <= b.last AND b.first <= a.last)
		SELECT coalesce((SELECT kind FROM chaos_faults cf WHERE cf.target_session = ov.session_id AND cf.started_at <= ov.first
		                 ORDER BY cf.started_at DESC LIMIT 1),
		                (SELECT $2::text FROM task_attempts pa WHERE pa.worker_session_id = ov.session_id
		                 AND pa.task_id = ANY($3::bigint[]) LIMIT 1), $1), count(*)
		FROM ov GROUP BY 1`, noFault, fPoison, c.poisonList())
	if err == nil {
		for q.Next() {
			var k string
			var n int64
			if q.Scan(&k, &n) == nil {
				if rows[k] == nil {
					rows[k] = &row{}
				}
				rows[k].overlaps = n
			}
		}
		q.Close()
	}
	var b bytes.Buffer
	elapsed := ""
	if now, err := r.pgNow(); err == nil {
		elapsed = now.Sub(c.start).Round(time.Second).String()
	}
	fmt.Fprintf(&b, "baton fault campaign: seed %d, faults for %s (run %s), 2 masters, 2 groups x 2 workers x 3 slots\n",
		c.seed, *chaosDuration, elapsed)
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "fault\tinjected\tlongest recovery\tnot recovered\toverlaps after it\t")
	var longest float64
	var longestKind string
	kinds := append([]string(nil), faultOrder...)
	for k := range rows {
		if !contains(kinds, k) {
			kinds = append(kinds, k)
		}
	}
	for _, k := range kinds {
		if why, no := c.unavailable[k]; no {
			fmt.Fprintf(tw, "%s\tUNAVAILABLE: %s\t\t\t\t\n", k, why)
			continue
		}
		x := rows[k]
		if x == nil {
			x = &row{}
		}
		rec := "-"
		switch {
		case x.n > 0 && x.longest < 0:
			rec = "never"
		case x.n > 0:
			rec = fmt.Sprintf("%.1fs", x.longest)
		}
		if x.longest > longest {
			longest, longestKind = x.longest, k
		}
		if k == noFault {
			fmt.Fprintf(tw, "%s\t\t\t\t%d\t\n", k, x.overlaps)
			continue
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%d\t\n", k, x.n, rec, x.unrec, x.overlaps)
	}
	_ = tw.Flush()
	c.sub.mu.Lock()
	byKind := fmt.Sprintf("shell %d, go %d, poison %d", c.sub.byKind[shellTask], c.sub.byKind[goTask], c.sub.byKind[poisonTask])
	c.sub.mu.Unlock()
	tw = tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "tasks\t%d (%s); succeeded %d, failed %d\t\n", f.Submitted, byKind, f.Succeeded, f.Failed)
	fmt.Fprintf(tw, "lost\t%d\t\n", f.Lost)
	fmt.Fprintf(tw, "overlapping attempts\t%d\t\n", f.Overlaps)
	fmt.Fprintf(tw, "tasks with >1 succeeded attempt\t%d\t\n", f.MultiWins)
	fmt.Fprintf(tw, "attempts started twice\t%d\t\n", f.Reruns)
	fmt.Fprintf(tw, "failover events not finished\t%d\t\n", f.OpenFailovers)
	fmt.Fprintf(tw, "dispatched to a dead session\t%d\t\n", f.ToDead)
	fmt.Fprintf(tw, "fenced writes refused\t%d\t\n", f.Fenced)
	fmt.Fprintf(tw, "group failover stalled by a held lock\t%d\t\n", len(c.stalled))
	fmt.Fprintf(tw, "longest recovery\t%.1fs (%s)\t\n", longest, longestKind)
	fmt.Fprintf(tw, "process restarts (supervisor)\t%d\t\n", r.restarts())
	_ = tw.Flush()
	// Tasks that failed although they were not poison: e.g. collateral of a poison
	// task (they shared its worker every time it was killed) or retries used up.
	if q, err := r.pool.Query(ctx, `SELECT 'task ' || id || ' ' || kind || ' ' || state || ': ' || left(last_error, 160)
		FROM tasks WHERE state IN ('failed', 'timed_out', 'canceled') AND NOT id = ANY($1::bigint[]) ORDER BY id LIMIT 10`,
		c.poisonList()); err == nil {
		for q.Next() {
			var s string
			if q.Scan(&s) == nil {
				fmt.Fprintf(&b, "failed, not poison: %s\n", s)
			}
		}
		q.Close()
	}
	for _, n := range c.notes {
		fmt.Fprintf(&b, "note: %s\n", n)
	}
	verdict := "PASS"
	var why []string
	for _, p := range f.Problems() {
		why = append(why, fmt.Sprintf("%s: %d", p.What, p.Count))
	}
	if len(c.stalled) > 0 {
		why = append(why, fmt.Sprintf("group failover stalled: %d", len(c.stalled)))
	}
	if n := c.unrecovered(); n > 0 {
		why = append(why, fmt.Sprintf("faults not recovered from: %d", n))
	}
	if len(why) > 0 {
		verdict = "FAIL (" + strings.Join(why, "; ") + ")"
	}
	fmt.Fprintf(&b, "verdict: %s\n", verdict)
	return b.String()
}

func contains(s []string, x string) bool {
	for _, v := range s {
		if v == x {
			return true
		}
	}
	return false
}

// flagSupported reports whether bin -h mentions --name.
func flagSupported(bin, name string) bool {
	out, _ := exec.Command(bin, "-h").CombinedOutput()
	return bytes.Contains(out, []byte("-"+name))
}

// cgroupNote says which containment the workers of this machine get: the same
// detection a worker runs at start (cgroup v2 where usable, pure or hybrid; else
// the supervisor alone).
func cgroupNote() string {
	m, err := contain.Open(contain.Options{CgroupDir: "baton-chaos-probe"})
	if err != nil {
		return "containment: UNAVAILABLE (" + err.Error() + ")"
	}
	defer m.Close() //nolint:errcheck
	if m.Mechanism() == contain.Cgroup {
		return "containment: cgroup v2 per attempt at " + m.Dir() + ", plus a supervisor per task"
	}
	return "containment: supervisor per task only; cgroup v2 UNAVAILABLE (" + m.Reason() + ")"
}

// killStray kills processes still running the ledger program of this test binary
// (zombie task processes of killed workers), so nothing outlives the test.
func killStray(ledger string) {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		var pid int
		if _, err := fmt.Sscan(e.Name(), &pid); err != nil {
			continue
		}
		cmd, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		if argv0, _, _ := bytes.Cut(cmd, []byte{0}); string(argv0) == ledger {
			pids = append(pids, pid)
		}
	}
	sort.Ints(pids)
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}
