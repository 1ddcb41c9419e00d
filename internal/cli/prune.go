package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/baton-scheduler/baton/internal/master"
	"github.com/baton-scheduler/baton/internal/retention"
)

// pruneCmd is `baton prune`: delete finished tasks (with their attempts), finished
// failover events and unreferenced ended sessions older than --retention, in
// batches, until none is left. Masters do the same every minute; this is for a
// first cleanup or a deployment that runs masters with --retention 0.
func pruneCmd(ctx context.Context, args []string, env Env, stdout, stderr io.Writer) error {
	fs := newFlagSet("baton prune", stderr)
	var c common
	c.register(fs, env, true)
	keep, err := envRetention(env)
	if err != nil {
		return err
	}
	fs.Var(&retentionValue{&keep}, "retention", "prune what finished longer ago than this, e.g. 30d, 72h (env BATON_RETENTION)")
	batch := fs.Int("batch", retention.BatchSizeDefault, "rows per DELETE")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if keep == master.RetentionForever {
		return errors.New("retention is 0 (keep everything): give --retention, e.g. --retention 30d")
	}
	if keep < time.Minute {
		return fmt.Errorf("retention %s is shorter than a minute", keep)
	}
	if *batch < 1 || *batch > 100000 {
		return fmt.Errorf("--batch %d is outside 1..100000", *batch)
	}
	pool, err := c.pool(ctx)
	if err != nil {
		return err
	}
	defer pool.Close()
	var total retention.Result
	for {
		res, err := retention.Prune(ctx, pool, retention.Config{Retention: keep, BatchSize: *batch})
		total.Tasks += res.Tasks
		total.FailoverEvents += res.FailoverEvents
		total.WorkerSessions += res.WorkerSessions
		total.MasterSessions += res.MasterSessions
		total.ScheduleFires += res.ScheduleFires
		if err != nil {
			return err
		}
		if res.Done {
			break
		}
	}
	if c.json {
		return json.NewEncoder(stdout).Encode(map[string]int64{
			"tasks": total.Tasks, "failover_events": total.FailoverEvents,
			"worker_sessions": total.WorkerSessions, "master_sessions": total.MasterSessions,
			"schedule_fires": total.ScheduleFires,
		})
	}
	_, err = fmt.Fprintf(stdout, "pruned %d tasks (with their attempts), %d failover events, %d worker sessions, %d master sessions, %d schedule ledger rows older than %s\n",
		total.Tasks, total.FailoverEvents, total.WorkerSessions, total.MasterSessions, total.ScheduleFires, formatRetention(keep))
	return err
}

// envRetention reads BATON_RETENTION (default 30 days; 0 keeps everything).
func envRetention(env Env) (time.Duration, error) {
	v := env("BATON_RETENTION")
	if v == "" {
		return master.RetentionDefault, nil
	}
	d, err := parseRetention(v)
	if err != nil {
		return 0, fmt.Errorf("BATON_RETENTION=%q: %w", v, err)
	}
	return d, nil
}

// parseRetention accepts a Go duration (720h) or whole days (30d); 0 means keep
// everything (master.RetentionForever).
func parseRetention(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if s == "0" {
		return master.RetentionForever, nil
	}
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(days)
		if err != nil || n < 0 || n > 36500 {
			return 0, fmt.Errorf("retention %q: want whole days 0..36500 (e.g. 30d) or a duration (e.g. 720h)", s)
		}
		if n == 0 {
			return master.RetentionForever, nil
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("retention %q: want whole days (e.g. 30d) or a duration (e.g. 720h)", s)
	}
	if d == 0 {
		return master.RetentionForever, nil
	}
	if d < 0 {
		return 0, fmt.Errorf("retention %q is negative", s)
	}
	return d, nil
}

func formatRetention(d time.Duration) string {
	if d == master.RetentionForever {
		return "0 (keep everything)"
	}
	if d%(24*time.Hour) == 0 {
		return fmt.Sprintf("%dd", d/(24*time.Hour))
	}
	return d.String()
}

// retentionValue is a flag.Value for --retention.
type retentionValue struct{ d *time.Duration }

func (v *retentionValue) String() string {
	if v == nil || v.d == nil {
		return ""
	}
	return formatRetention(*v.d)
}

func (v *retentionValue) Set(s string) error {
	d, err := parseRetention(s)
	if err != nil {
		return err
	}
	*v.d = d
	return nil
}
