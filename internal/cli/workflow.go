package cli

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/apimodel"
	"github.com/baton-scheduler/baton/internal/store"
	"github.com/baton-scheduler/baton/internal/workflow"
)

const workflowUsage = `  baton workflow apply -f FILE             validate and store a workflow (YAML); a new version only if it changed
  baton workflow list
`

func (a *app) workflowCmd() *cobra.Command {
	return groupCommand("workflow", "apply and list workflows (versioned DAGs of tasks)",
		`A workflow is a versioned DAG of steps, each a task (docs/workflows.md). Apply
stores a new immutable version only when the content changed; a run pins the
version it started on.`,
		`  baton workflow apply -f examples/workflows/nightly-report.yaml
  baton workflow list --json`,
		a.workflowApplyCmd(), a.workflowListCmd())
}

func (a *app) workflowApplyCmd() *cobra.Command {
	var c common
	var file string
	cmd := &cobra.Command{
		Use:   "apply -f FILE",
		Short: "validate and store a workflow (YAML); a new version only if it changed",
		Long: `Validate a workflow definition (YAML) and store it: a new version if its content
differs from the latest, else nothing ("unchanged"). A cycle, an unknown
dependency, parameter, group or output, a duplicate step or a bad duration is
refused, naming the place, and nothing is stored.`,
		Example: `  baton workflow apply -f examples/workflows/nightly-report.yaml
  cat wf.yaml | baton workflow apply -f - --json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			if file == "" {
				return usageErrorf(cmd, "missing -f FILE: usage: baton workflow apply -f FILE")
			}
			var data []byte
			var err error
			if file == "-" {
				data, err = io.ReadAll(io.LimitReader(cmd.InOrStdin(), 16<<20))
			} else {
				data, err = os.ReadFile(file)
			}
			if err != nil {
				return fmt.Errorf("read workflow: %w", err)
			}
			d, err := workflow.Parse(data)
			if err != nil {
				return err
			}
			if err := d.Validate(); err != nil {
				return err
			}
			pool, err := c.pool(ctx)
			if err != nil {
				return err
			}
			defer pool.Close()
			var ap workflow.Applied
			if err := store.WithTx(ctx, pool, func(q *db.Queries, _ pgx.Tx) error {
				ap, err = workflow.Apply(ctx, q, d)
				return err
			}); err != nil {
				return err
			}
			if c.json {
				return writeJSON(a.stdout, apimodel.Applied{Name: ap.Name, Version: ap.Version, Created: ap.Created})
			}
			if ap.Created {
				fmt.Fprintf(a.stdout, "workflow %s: stored version %d\n", ap.Name, ap.Version)
			} else {
				fmt.Fprintf(a.stdout, "workflow %s: unchanged (version %d)\n", ap.Name, ap.Version)
			}
			return nil
		},
	}
	c.register(cmd, a.env, true)
	cmd.Flags().StringVarP(&file, "file", "f", "", "the workflow's YAML file (- for stdin)")
	aliasFlags(cmd.Flags(), map[string]string{"f": "file"})
	return cmd
}

func (a *app) workflowListCmd() *cobra.Command {
	var c common
	cmd := &cobra.Command{
		Use:     "list",
		Short:   "list workflows with their latest version",
		Long:    "List the stored workflows: name, latest version, when created and last changed.",
		Example: "  baton workflow list\n  baton workflow list --json",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			pool, err := c.pool(ctx)
			if err != nil {
				return err
			}
			defer pool.Close()
			rows, err := db.New(pool).WorkflowList(ctx)
			if err != nil {
				return fmt.Errorf("list workflows: %w", err)
			}
			return printRows(a.stdout, c.json, apimodel.Workflows(rows), rows, "NAME\tVERSION\tCREATED\tUPDATED", func(out io.Writer, w db.WorkflowListRow) {
				fmt.Fprintf(out, "%s\t%d\t%s\t%s\n", w.Name, w.LatestVersion, w.CreatedAt.Format(time.RFC3339), w.UpdatedAt.Format(time.RFC3339))
			})
		},
	}
	c.register(cmd, a.env, true)
	return cmd
}

// aliasFlags makes --alias (two dashes) another spelling of a flag: the
// single-letter flags of the flag-package CLI (-f, -n) are shorthands now,
// and --f, --n keep working.
func aliasFlags(fs *pflag.FlagSet, aliases map[string]string) {
	fs.SetNormalizeFunc(func(_ *pflag.FlagSet, name string) pflag.NormalizedName {
		if to, ok := aliases[name]; ok {
			name = to
		}
		return pflag.NormalizedName(name)
	})
}
