package baton

import (
	"fmt"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/baton-scheduler/baton/internal/httpapi"
)

// HTTPConfig configures NewHTTPHandler; zero fields take defaults.
type HTTPConfig struct {
	// Schema is baton's Postgres schema (default "baton").
	Schema string
	// WorkerTimeout judges which workers count as live; use the masters'
	// value (default MasterWorkerTimeoutDefault).
	WorkerTimeout time.Duration
	// MaxBodyBytes bounds a request body (default 1 MiB + 64 KiB).
	MaxBodyBytes int64
	// BasePath is the prefix the handler is mounted under ("/baton" in the
	// example below), for the status page's links and cookie; default "".
	BasePath string
	// Logger logs server errors (5xx); nil logs nothing.
	Logger *zap.Logger
}

// NewHTTPHandler returns baton's HTTP API (docs/openapi.yaml) on the
// application's pool, to mount in its own server, e.g.
//
//	h, err := baton.NewHTTPHandler(pool, &baton.HTTPConfig{BasePath: "/baton"})
//	mux.Handle("/baton/", http.StripPrefix("/baton", h))
//
// Routes: /api/v1/... (bearer tokens from `baton token create`: read scope for
// GET, operate for changes, each change audited), /livez, /readyz, and the
// status page at /ui/ (sign in with a read token). It is the handler
// baton-master serves on --http-addr.
func NewHTTPHandler(pool *pgxpool.Pool, cfg *HTTPConfig) (http.Handler, error) {
	var c HTTPConfig
	if cfg != nil {
		c = *cfg
	}
	if c.WorkerTimeout <= 0 {
		c.WorkerTimeout = MasterWorkerTimeoutDefault
	}
	h, err := httpapi.New(httpapi.Config{Pool: pool, Schema: c.Schema, WorkerTimeout: c.WorkerTimeout, MaxBodyBytes: c.MaxBodyBytes,
		BasePath: c.BasePath, Logger: c.Logger})
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidConfig, err)
	}
	return h, nil
}
