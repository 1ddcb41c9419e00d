package cli

import (
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/apimodel"
	"github.com/baton-scheduler/baton/internal/httpapi"
	"github.com/baton-scheduler/baton/internal/taskops"
)

func (a *app) tokenCmd() *cobra.Command {
	return groupCommand("token", "create, list and revoke HTTP API bearer tokens",
		`Bearer tokens of the HTTP API (baton-master --http-addr). Scope read allows the GET
endpoints, operate also every change. A token is shown once at creation; only its
SHA-256 is stored. Creation and revocation are recorded in the audit log.`,
		`  baton token create --name ci --scope read
  baton token list
  baton token revoke 3`,
		a.tokenCreateCmd(), a.tokenListCmd(), a.tokenRevokeCmd())
}

func (a *app) tokenCreateCmd() *cobra.Command {
	var c common
	var name, scope string
	cmd := &cobra.Command{
		Use:     "create --name N --scope read|operate",
		Short:   "create a token; prints it once",
		Long:    "Create a bearer token and print it (once: only its SHA-256 is stored).",
		Example: "  baton token create --name grafana --scope read\n  baton token create --name ops --scope operate --json",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			if scope != httpapi.ScopeRead && scope != httpapi.ScopeOperate {
				return fmt.Errorf("--scope %q: use read or operate", scope)
			}
			if name == "" || len(name) > 200 {
				return errors.New("--name is required (1-200 characters)")
			}
			pool, err := c.pool(ctx)
			if err != nil {
				return err
			}
			defer pool.Close()
			tok, hash, err := httpapi.NewToken()
			if err != nil {
				return err
			}
			var row db.TokenCreateRow
			err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
				q := db.New(tx)
				if row, err = q.TokenCreate(ctx, db.TokenCreateParams{Name: name, Scope: scope, TokenSha256: hash}); err != nil {
					return fmt.Errorf("create token: %w", err)
				}
				return taskops.Audit(ctx, q, cliActor, "token.create", fmt.Sprint(row.ID), map[string]any{"name": name, "scope": scope})
			})
			if err != nil {
				return err
			}
			if c.json {
				return writeJSON(a.stdout, apimodel.TokenCreated{ID: row.ID, Name: name, Scope: scope, Token: tok})
			}
			fmt.Fprintf(a.stdout, "%s\n", tok)
			fmt.Fprintf(a.stdout, "# token %d (%s, scope %s): shown once, only its SHA-256 is stored\n", row.ID, name, scope)
			return nil
		},
	}
	c.register(cmd, a.env, true)
	cmd.Flags().StringVar(&name, "name", "", "what the token is for (shown in the audit log)")
	cmd.Flags().StringVar(&scope, "scope", "", "read (GET endpoints) or operate (also every change)")
	return cmd
}

func (a *app) tokenListCmd() *cobra.Command {
	var c common
	cmd := &cobra.Command{
		Use:     "list",
		Short:   "list tokens (never the tokens themselves)",
		Long:    "List the tokens: id, name, scope, when created and revoked. The tokens themselves are never stored.",
		Example: "  baton token list\n  baton token list --json",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			pool, err := c.pool(cmd.Context())
			if err != nil {
				return err
			}
			defer pool.Close()
			rows, err := db.New(pool).TokenList(cmd.Context())
			if err != nil {
				return fmt.Errorf("list tokens: %w", err)
			}
			return printRows(a.stdout, c.json, apimodel.Tokens(rows), rows, "ID\tNAME\tSCOPE\tCREATED\tREVOKED", func(out io.Writer, r db.TokenListRow) {
				fmt.Fprintf(out, "%d\t%s\t%s\t%s\t%s\n", r.ID, r.Name, r.Scope, r.CreatedAt.UTC().Format(time.RFC3339), optTime(r.RevokedAt))
			})
		},
	}
	c.register(cmd, a.env, true)
	return cmd
}

func (a *app) tokenRevokeCmd() *cobra.Command {
	var c common
	cmd := &cobra.Command{
		Use:     "revoke ID",
		Short:   "revoke a token",
		Long:    "Revoke a token: the API refuses it from then on. Revoking an unknown or revoked token fails.",
		Example: "  baton token revoke 3",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usageErrorf(cmd, "usage: baton token revoke ID")
			}
			if len(args) > 1 {
				return usageErrorf(cmd, "usage: baton token revoke ID (one id)")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			ids, err := parseIDs("token", args)
			if err != nil {
				return err
			}
			id := ids[0]
			pool, err := c.pool(ctx)
			if err != nil {
				return err
			}
			defer pool.Close()
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
				fmt.Fprintf(a.stdout, "token %d revoked\n", id)
				return nil
			})
		},
	}
	c.register(cmd, a.env, true) // --json: accepted, as before; revoke prints one line
	return cmd
}
