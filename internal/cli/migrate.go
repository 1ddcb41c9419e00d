package cli

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/baton-scheduler/baton/internal/apimodel"
	"github.com/baton-scheduler/baton/internal/migrate"
)

func (a *app) migrateCmd() *cobra.Command {
	return groupCommand("migrate", "apply, roll back and inspect the embedded schema",
		`The binary embeds baton's migrations (goose). They run in the Postgres schema
"baton" (created if missing); add baton_schema=<schema> to the URL for another.
Daemons refuse a database whose schema is older or newer than they know.`,
		`  baton migrate up
  baton migrate status
  baton migrate down --to 12
  baton migrate move-from-public`,
		a.migrateStep("up", "apply every pending migration", "Apply every migration the database lacks, in order.", "  baton migrate up",
			func(ctx context.Context, m *migrate.Migrator, out io.Writer, asJSON bool) error {
				n, err := m.Up(ctx)
				if err != nil {
					return err
				}
				v, _ := m.Version(ctx)
				fmt.Fprintf(out, "applied %d migration(s); schema at version %d\n", n, v)
				return nil
			}),
		a.migrateDownCmd(),
		a.migrateStep("status", "list migrations and whether each is applied", "List every migration the binary knows: version, applied or not, when, file.", "  baton migrate status\n  baton migrate status --json",
			func(ctx context.Context, m *migrate.Migrator, out io.Writer, asJSON bool) error {
				st, err := m.Status(ctx)
				if err != nil {
					return err
				}
				if asJSON {
					model := make([]apimodel.Migration, 0, len(st))
					for _, s := range st {
						mg := apimodel.Migration{Version: s.Version, File: s.Name, Applied: s.Applied}
						if t, err := time.Parse("2006-01-02 15:04:05Z", s.AppliedAt); err == nil {
							mg.AppliedAt = &apimodel.Time{Time: t}
						}
						model = append(model, mg)
					}
					return writeJSON(out, model)
				}
				tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "VERSION\tAPPLIED\tAPPLIED AT\tFILE")
				for _, s := range st {
					fmt.Fprintf(tw, "%d\t%v\t%s\t%s\n", s.Version, s.Applied, s.AppliedAt, s.Name)
				}
				return tw.Flush()
			}),
		a.migrateStep("version", "print the schema's version and the binary's latest", "Print the database schema's version and the latest version this binary knows.", "  baton migrate version\n  baton migrate version --json | jq .version",
			func(ctx context.Context, m *migrate.Migrator, out io.Writer, asJSON bool) error {
				v, err := m.Version(ctx)
				if err != nil {
					return err
				}
				if asJSON {
					return writeJSON(out, apimodel.SchemaVersion{Version: v, Latest: m.Latest()})
				}
				fmt.Fprintf(out, "%d (binary knows up to %d)\n", v, m.Latest())
				return nil
			}),
		a.migrateStep("move-from-public", "move a pre-schema install (tables in public) into baton's schema",
			"Move an install from before schemas (baton's tables in public) into the schema baton uses, in one transaction. Stop masters and workers first.",
			"  baton migrate move-from-public",
			func(ctx context.Context, m *migrate.Migrator, out io.Writer, asJSON bool) error {
				n, err := m.MoveFromPublic(ctx)
				if err != nil {
					return err
				}
				fmt.Fprintf(out, "moved %d tables and views from public to schema %s\n", n, m.Schema())
				return nil
			}),
	)
}

// migrateStep is a migrate subcommand: open the migrator, run fn.
func (a *app) migrateStep(name, short, long, example string, fn func(ctx context.Context, m *migrate.Migrator, out io.Writer, asJSON bool) error) *cobra.Command {
	var c common
	cmd := &cobra.Command{
		Use:     name,
		Short:   short,
		Long:    long,
		Example: example,
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			m, err := migrate.New(cmd.Context(), c.dsn)
			if err != nil {
				return err
			}
			defer m.Close()
			return fn(cmd.Context(), m, a.stdout, c.json)
		},
	}
	// --json on the read commands (status, version) only.
	c.register(cmd, a.env, name == "status" || name == "version")
	return cmd
}

func (a *app) migrateDownCmd() *cobra.Command {
	var to int64
	cmd := a.migrateStep("down", "roll back one migration (or down to --to)",
		"Roll back the latest migration, or every migration above --to (0 = everything). Rolling back drops what the migrations created: data included.",
		"  baton migrate down\n  baton migrate down --to 12",
		func(ctx context.Context, m *migrate.Migrator, out io.Writer, asJSON bool) error {
			if to < 0 {
				v, err := m.Down(ctx)
				if err != nil {
					return err
				}
				fmt.Fprintf(out, "rolled back migration %d\n", v)
				return nil
			}
			n, err := m.DownTo(ctx, to)
			if err != nil {
				return err
			}
			v, err := m.Version(ctx)
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "rolled back %d migration(s); schema at version %d\n", n, v)
			return nil
		})
	cmd.Flags().Int64Var(&to, "to", -1, "roll back to this version (0 = everything); default one step")
	return cmd
}
