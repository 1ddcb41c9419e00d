package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/apimodel"
	"github.com/baton-scheduler/baton/internal/httpapi"
	"github.com/baton-scheduler/baton/internal/master"
	"github.com/baton-scheduler/baton/internal/taskops"
)

// cliActor is how the audit log names the command line.
var cliActor = taskops.Actor{Name: "cli"}

// taskCancel is `baton task cancel ID...`: each task in its own transaction,
// audited; finished tasks are reported, unknown ids fail the command.
func taskCancel(ctx context.Context, fs *flag.FlagSet, c *common, args []string, stdout io.Writer) error {
	ids, err := parseIDs(fs, args, "baton task cancel ID... [--json]")
	if err != nil {
		return err
	}
	pool, err := c.pool(ctx)
	if err != nil {
		return err
	}
	defer pool.Close()
	var missing []string
	var out []apimodel.Task
	for _, id := range ids {
		var row db.Task
		var changed bool
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			q := db.New(tx)
			var err error
			if row, changed, err = taskops.Cancel(ctx, q, id, "canceled by baton task cancel"); err != nil {
				return err
			}
			if !changed {
				return nil
			}
			return taskops.Audit(ctx, q, cliActor, "task.cancel", fmt.Sprint(id), map[string]any{"ids": []int64{id}})
		})
		switch {
		case errors.Is(err, taskops.ErrNotFound):
			missing = append(missing, strconv.FormatInt(id, 10))
			continue
		case err != nil:
			return err
		}
		out = append(out, apimodel.TaskFromRow(row))
		if c.json {
			continue
		}
		if changed {
			fmt.Fprintf(stdout, "task %d canceled\n", id)
		} else {
			fmt.Fprintf(stdout, "task %d already %s\n", id, row.State)
		}
	}
	if c.json {
		if err := json.NewEncoder(stdout).Encode(out); err != nil {
			return err
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("task %s not found", strings.Join(missing, ", "))
	}
	return nil
}

// parseIDs parses flags that may sit among one or more task ids.
func parseIDs(fs *flag.FlagSet, args []string, usage string) ([]int64, error) {
	var ids []int64
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			break
		}
		a := fs.Arg(0)
		id, err := strconv.ParseInt(a, 10, 64)
		if err != nil || id <= 0 {
			return nil, fmt.Errorf("task id %q is not a positive number", a)
		}
		ids = append(ids, id)
		args = fs.Args()[1:]
	}
	if len(ids) == 0 {
		return nil, errors.New("usage: " + usage)
	}
	return ids, nil
}

// groupCmd is `baton group list|show|create`.
func groupCmd(ctx context.Context, args []string, env Env, stdout, stderr io.Writer) error {
	cmd, rest, err := sub(args, "group", "list", "show", "create")
	if err != nil {
		return err
	}
	fs := newFlagSet("baton group "+cmd, stderr)
	var c common
	c.register(fs, env, true)
	desc := fs.String("description", "", "create: the group's description")
	workerTimeout := fs.Duration("worker-timeout", master.WorkerTimeoutDefault, "heartbeat age after which a worker is not counted live (the masters' value)")
	if err := fs.Parse(rest); err != nil {
		return err
	}
	var name string
	if cmd != "list" {
		if fs.NArg() < 1 {
			return fmt.Errorf("usage: baton group %s NAME", cmd)
		}
		name = fs.Arg(0)
		if err := parseNoArgs(fs, fs.Args()[1:]); err != nil {
			return err
		}
	} else if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	pool, err := c.pool(ctx)
	if err != nil {
		return err
	}
	defer pool.Close()
	if cmd == "create" {
		var n int64
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			q := db.New(tx)
			var err error
			if n, err = q.GroupCreate(ctx, db.GroupCreateParams{Name: name, Description: *desc}); err != nil {
				return err
			}
			if n == 0 {
				return nil
			}
			return taskops.Audit(ctx, q, cliActor, "group.create", name, map[string]any{"description": *desc})
		})
		if err != nil {
			return fmt.Errorf("create group %q (1-63 of letters, digits, _ . - starting with a letter or digit): %w", name, err)
		}
		if c.json {
			return json.NewEncoder(stdout).Encode(map[string]any{"name": name, "created": n == 1})
		}
		if n == 1 {
			fmt.Fprintf(stdout, "group %s created\n", name)
		} else {
			fmt.Fprintf(stdout, "group %s exists\n", name)
		}
		return nil
	}
	groups, err := ListGroups(ctx, db.New(pool), name, *workerTimeout)
	if err != nil {
		return err
	}
	if cmd == "show" {
		if len(groups) == 0 {
			return fmt.Errorf("group %q not found", name)
		}
		if c.json {
			return json.NewEncoder(stdout).Encode(groups[0])
		}
		g := groups[0]
		fmt.Fprintf(stdout, "group %s  paused %v  live workers %d  waiting tasks %d  retry backoff %s..%s  created %s\n",
			g.Name, g.Paused, g.LiveWorkers, g.WaitingTasks, time.Duration(g.RetryBackoff.BaseMs)*time.Millisecond,
			time.Duration(g.RetryBackoff.MaxMs)*time.Millisecond, g.CreatedAt.UTC().Format(time.RFC3339))
		if g.Description != "" {
			fmt.Fprintf(stdout, "description: %s\n", g.Description)
		}
		return nil
	}
	return printRows(stdout, c.json, groups, groups, "NAME\tPAUSED\tLIVE WORKERS\tWAITING\tDESCRIPTION", func(out io.Writer, g apimodel.Group) {
		fmt.Fprintf(out, "%s\t%v\t%d\t%d\t%s\n", g.Name, g.Paused, g.LiveWorkers, g.WaitingTasks, g.Description)
	})
}

// ListGroups reads groups in the JSON model (name "" = all).
func ListGroups(ctx context.Context, q *db.Queries, name string, workerTimeout time.Duration) ([]apimodel.Group, error) {
	rows, err := q.GroupList(ctx, db.GroupListParams{WorkerTimeoutMs: workerTimeout.Milliseconds(), Name: nilIfEmpty(name)})
	if err != nil {
		return nil, fmt.Errorf("list groups: %w", err)
	}
	return apimodel.Groups(rows), nil
}

// tokenCmd is `baton token create|list|revoke`.
func tokenCmd(ctx context.Context, args []string, env Env, stdout, stderr io.Writer) error {
	cmd, rest, err := sub(args, "token", "create", "list", "revoke")
	if err != nil {
		return err
	}
	fs := newFlagSet("baton token "+cmd, stderr)
	var c common
	c.register(fs, env, true)
	name := fs.String("name", "", "create: what the token is for (shown in the audit log)")
	scope := fs.String("scope", "", "create: read (GET endpoints) or operate (also every change)")
	var id int64
	if cmd == "revoke" {
		ids, err := parseIDs(fs, rest, "baton token revoke ID")
		if err != nil {
			return err
		}
		if len(ids) != 1 {
			return errors.New("usage: baton token revoke ID (one id)")
		}
		id = ids[0]
	} else if err := parseNoArgs(fs, rest); err != nil {
		return err
	}
	if cmd == "create" {
		if *scope != httpapi.ScopeRead && *scope != httpapi.ScopeOperate {
			return fmt.Errorf("--scope %q: use read or operate", *scope)
		}
		if *name == "" || len(*name) > 200 {
			return errors.New("--name is required (1-200 characters)")
		}
	}
	pool, err := c.pool(ctx)
	if err != nil {
		return err
	}
	defer pool.Close()
	switch cmd {
	case "create":
		tok, hash, err := httpapi.NewToken()
		if err != nil {
			return err
		}
		var row db.TokenCreateRow
		err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			q := db.New(tx)
			if row, err = q.TokenCreate(ctx, db.TokenCreateParams{Name: *name, Scope: *scope, TokenSha256: hash}); err != nil {
				return fmt.Errorf("create token: %w", err)
			}
			return taskops.Audit(ctx, q, cliActor, "token.create", fmt.Sprint(row.ID), map[string]any{"name": *name, "scope": *scope})
		})
		if err != nil {
			return err
		}
		if c.json {
			return json.NewEncoder(stdout).Encode(map[string]any{"id": row.ID, "name": *name, "scope": *scope, "token": tok})
		}
		fmt.Fprintf(stdout, "%s\n", tok)
		fmt.Fprintf(stdout, "# token %d (%s, scope %s): shown once, only its SHA-256 is stored\n", row.ID, *name, *scope)
		return nil
	case "revoke":
		return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			q := db.New(tx)
			n, err := q.TokenRevoke(ctx, id)
			if err != nil {
				return fmt.Errorf("revoke token %d: %w", id, err)
			}
			if n == 0 {
				return fmt.Errorf("token %d not found or already revoked", id)
			}
			if err := taskops.Audit(ctx, q, cliActor, "token.revoke", fmt.Sprint(id), map[string]any{}); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "token %d revoked\n", id)
			return nil
		})
	default:
		rows, err := db.New(pool).TokenList(ctx)
		if err != nil {
			return fmt.Errorf("list tokens: %w", err)
		}
		type token struct {
			ID        int64          `json:"id"`
			Name      string         `json:"name"`
			Scope     string         `json:"scope"`
			CreatedAt apimodel.Time  `json:"created_at"`
			RevokedAt *apimodel.Time `json:"revoked_at"`
		}
		model := make([]token, 0, len(rows))
		for _, r := range rows {
			model = append(model, token{r.ID, r.Name, r.Scope, apimodel.At(r.CreatedAt), apimodel.AtPtr(r.RevokedAt)})
		}
		if c.json {
			return json.NewEncoder(stdout).Encode(model)
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tNAME\tSCOPE\tCREATED\tREVOKED")
		for _, r := range rows {
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\n", r.ID, r.Name, r.Scope, r.CreatedAt.UTC().Format(time.RFC3339), optTime(r.RevokedAt))
		}
		return tw.Flush()
	}
}

// healthcheckCmd is `baton healthcheck`: for images without curl. Exit 0 when
// the master's /readyz answers 200 within --timeout.
func healthcheckCmd(ctx context.Context, args []string, env Env, stdout, stderr io.Writer) error {
	fs := newFlagSet("baton healthcheck", stderr)
	url := fs.String("url", envDefault(env, "BATON_HEALTHCHECK_URL", "http://127.0.0.1:8080"), "the master's HTTP address (env BATON_HEALTHCHECK_URL)")
	path := fs.String("path", "/readyz", "endpoint: /readyz (database reachable, schema current) or /livez (process only)")
	timeout := fs.Duration("timeout", 5*time.Second, "give up after this long")
	if err := parseNoArgs(fs, args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(*url, "/")+*path, nil)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("healthcheck %s: %s: %s", req.URL, resp.Status, strings.TrimSpace(string(body)))
	}
	fmt.Fprintf(stdout, "ok %s\n", strings.TrimSpace(string(body)))
	return nil
}
