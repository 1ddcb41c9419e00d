package cli

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/baton-scheduler/baton/internal/master"
	"github.com/baton-scheduler/baton/internal/retention"
)

// pruneCmd is `baton prune`: delete finished tasks (with their attempts), finished
// failover events and unreferenced ended sessions older than --retention, in
// batches, until none is left. Masters do the same every minute; this is for a
// first cleanup or a deployment that runs masters with --retention 0.
func (a *app) pruneCmd() *cobra.Command {
	var c common
	var keep time.Duration
	var keepErr error
	var batch int
	cmd := &cobra.Command{
		Use:   "prune",
		Short: "delete finished tasks, old failover events and ended sessions",
		Long: `Delete what finished longer ago than --retention (default: env BATON_RETENTION,
else 30d): finished tasks with their attempts, finished failover events, and ended
worker and master sessions no task refers to, and schedule ledger rows exactly-once
no longer needs; in batches of --batch rows, until
none is left. Masters do the same every minute unless run with --retention 0;
this is for a first cleanup or such a deployment.`,
		Example: `  baton prune
  baton prune --retention 7d --batch 5000
  baton prune --retention 72h --json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			if keepErr != nil {
				return keepErr
			}
			if keep == master.RetentionForever {
				return errors.New("retention is 0 (keep everything): give --retention, e.g. --retention 30d")
			}
			if keep < time.Minute {
				return fmt.Errorf("retention %s is shorter than a minute", keep)
			}
			if batch < 1 || batch > 100000 {
				return fmt.Errorf("--batch %d is outside 1..100000", batch)
			}
			pool, err := c.pool(ctx)
			if err != nil {
				return err
			}
			defer pool.Close()
			var total retention.Result
			for {
				res, err := retention.Prune(ctx, pool, retention.Config{Retention: keep, BatchSize: batch})
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
				return writeJSON(a.stdout, map[string]int64{
					"tasks": total.Tasks, "failover_events": total.FailoverEvents,
					"worker_sessions": total.WorkerSessions, "master_sessions": total.MasterSessions,
					"schedule_fires": total.ScheduleFires,
				})
			}
			_, err = fmt.Fprintf(a.stdout, "pruned %d tasks (with their attempts), %d failover events, %d worker sessions, %d master sessions, %d schedule ledger rows older than %s\n",
				total.Tasks, total.FailoverEvents, total.WorkerSessions, total.MasterSessions, total.ScheduleFires, formatRetention(keep))
			return err
		},
	}
	c.register(cmd, a.env, true)
	keep, keepErr = envRetention(a.env)
	cmd.Flags().Var(&retentionValue{&keep}, "retention", "prune what finished longer ago than this, e.g. 30d, 72h (env BATON_RETENTION)")
	cmd.Flags().IntVar(&batch, "batch", retention.BatchSizeDefault, "rows per DELETE")
	return cmd
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

// retentionValue is a pflag.Value for --retention.
type retentionValue struct{ d *time.Duration }

func (v *retentionValue) String() string {
	if v == nil || v.d == nil {
		return ""
	}
	return formatRetention(*v.d)
}

// Type names the value in --help.
func (v *retentionValue) Type() string { return "retention" }

func (v *retentionValue) Set(s string) error {
	d, err := parseRetention(s)
	if err != nil {
		return err
	}
	*v.d = d
	return nil
}
