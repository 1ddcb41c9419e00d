// Package invoicing is a small service that embeds baton the way an application
// would: its own tables and goose migrations in public, baton's in schema
// "baton", invoices sent by a baton task submitted in the same transaction that
// creates the invoice.
package invoicing

import (
	"context"
	"database/sql"
	"embed"
	"encoding/json"
	"fmt"
	"io/fs"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/pressly/goose/v3"

	"github.com/baton-scheduler/baton"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Migrate applies the application's own migrations (goose, default version
// table public.goose_db_version).
func Migrate(ctx context.Context, db *sql.DB) error {
	sub, err := fs.Sub(migrations, "migrations")
	if err != nil {
		return err
	}
	p, err := goose.NewProvider(goose.DialectPostgres, db, sub)
	if err != nil {
		return err
	}
	_, err = p.Up(ctx)
	return err
}

// KindSend is the task kind that sends an invoice.
const KindSend = "invoice.send"

// Group is the worker group of the service's tasks.
const Group = "billing"

// SendPayload is KindSend's payload.
type SendPayload struct {
	InvoiceID int64 `json:"invoice_id"`
}

// Service creates invoices.
type Service struct {
	Pool *pgxpool.Pool
	Jobs *baton.Client
}

// CreateInvoice stores an invoice and submits its sending in one transaction;
// before is called inside the transaction after the submit (tests make it fail).
func (s *Service) CreateInvoice(ctx context.Context, customer string, cents int, before func(pgx.Tx) error) (invoiceID, taskID int64, err error) {
	err = pgx.BeginFunc(ctx, s.Pool, func(tx pgx.Tx) error {
		if err := tx.QueryRow(ctx, "INSERT INTO invoices (customer, cents) VALUES ($1, $2) RETURNING id", customer, cents).Scan(&invoiceID); err != nil {
			return fmt.Errorf("insert invoice: %w", err)
		}
		payload, _ := json.Marshal(SendPayload{InvoiceID: invoiceID})
		taskID, err = s.Jobs.SubmitTx(ctx, tx, baton.TaskSpec{Group: Group, Kind: KindSend, Payload: payload, MaxRetries: 3})
		if err != nil {
			return fmt.Errorf("submit send: %w", err)
		}
		// The application's own table named tasks is still what "tasks" means here.
		if _, err := tx.Exec(ctx, "INSERT INTO tasks (title) VALUES ($1)", fmt.Sprintf("follow up invoice %d", invoiceID)); err != nil {
			return fmt.Errorf("insert to-do: %w", err)
		}
		if before != nil {
			return before(tx)
		}
		return nil
	})
	return invoiceID, taskID, err
}

// SendHandler marks the invoice sent (a real service would email it).
func SendHandler(pool *pgxpool.Pool) baton.Handler {
	return func(ctx context.Context, t baton.Task) (string, error) {
		var p SendPayload
		if err := json.Unmarshal(t.Payload, &p); err != nil {
			return "", fmt.Errorf("bad payload: %w", err)
		}
		tag, err := pool.Exec(ctx, "UPDATE invoices SET sent_at = now() WHERE id = $1 AND sent_at IS NULL", p.InvoiceID)
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("sent invoice %d (%d row)", p.InvoiceID, tag.RowsAffected()), nil
	}
}
