// Package httpapi is baton's HTTP API and status page: the handler a master
// serves on --http-addr and an application mounts (baton.NewHTTPHandler). Every
// body is the JSON model of package apimodel; docs/openapi.yaml describes every
// route, and the tests check the two against each other.
//
// Authentication: every /api/ route takes a bearer token (baton token create),
// stored as its SHA-256; read scope for GET, operate scope for every change.
// /livez, /readyz and /metrics take none. Each mutating call writes an
// audit_log row in the transaction of its change.
package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/apimodel"
	"github.com/baton-scheduler/baton/internal/migrate"
	"github.com/baton-scheduler/baton/internal/store"
	"github.com/baton-scheduler/baton/internal/submit"
	"github.com/baton-scheduler/baton/internal/taskops"
)

// Config configures the handler; zero fields take defaults.
type Config struct {
	// Pool is the database; it need not have baton's schema on its search_path.
	Pool *pgxpool.Pool
	// Schema is baton's Postgres schema (default "baton").
	Schema string
	// WorkerTimeout judges which workers count as live (the masters' value).
	WorkerTimeout time.Duration
	// MaxBodyBytes bounds a request body (default 1 MiB + 64 KiB: a task of
	// the largest payload fits; more is refused with 413).
	MaxBodyBytes int64
	// Metrics, if set, is served at /metrics.
	Metrics http.Handler
	// BasePath is the prefix the handler is mounted under (links of the
	// status page), e.g. "/baton"; default "".
	BasePath string
	Logger   *zap.Logger
}

// Defaults.
const (
	MaxBodyBytesDefault = submit.MaxPayloadBytes + 64<<10
	// MaxBulk bounds the tasks one bulk call acts on; a filter matching more
	// acts on the newest MaxBulk (call again for the rest).
	MaxBulk   = 10000
	listLimit = 100
)

// Server is the handler.
type Server struct {
	cfg    Config
	mux    *http.ServeMux
	routes []Route
	log    *zap.Logger
	cache  overviewCache
	live   liveFeed
}

// Route is one method and path of the API (the OpenAPI test reads them).
type Route struct {
	Method, Path string
	// Scope is the token scope it needs; "" for none.
	Scope string
}

// New returns the handler.
func New(cfg Config) (*Server, error) {
	if cfg.Pool == nil {
		return nil, errors.New("http api: pool is nil")
	}
	if cfg.Schema == "" {
		cfg.Schema = store.SchemaDefault
	}
	if err := migrate.ValidSchema(cfg.Schema); err != nil {
		return nil, fmt.Errorf("http api: %w", err)
	}
	if cfg.WorkerTimeout <= 0 {
		cfg.WorkerTimeout = 5 * time.Second
	}
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = MaxBodyBytesDefault
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	s := &Server{cfg: cfg, mux: http.NewServeMux(), log: cfg.Logger}
	s.handle("GET /livez", "", s.livez)
	s.handle("GET /readyz", "", s.readyz)
	if cfg.Metrics != nil {
		s.mux.Handle("GET /metrics", cfg.Metrics)
		s.routes = append(s.routes, Route{"GET", "/metrics", ""})
	}
	s.api("GET /api/v1/tasks", ScopeRead, s.listTasks)
	s.api("POST /api/v1/tasks", ScopeOperate, s.submitTask)
	s.api("GET /api/v1/tasks/{id}", ScopeRead, s.getTask)
	s.api("POST /api/v1/tasks/{id}/cancel", ScopeOperate, s.cancelTask)
	s.api("POST /api/v1/tasks/{id}/retry", ScopeOperate, s.retryTask)
	s.api("POST /api/v1/tasks/cancel", ScopeOperate, s.bulk("cancel"))
	s.api("POST /api/v1/tasks/retry", ScopeOperate, s.bulk("retry"))
	s.api("GET /api/v1/groups", ScopeRead, s.listGroups)
	s.api("POST /api/v1/groups", ScopeOperate, s.createGroup)
	s.api("GET /api/v1/groups/{name}", ScopeRead, s.getGroup)
	s.api("POST /api/v1/groups/{name}/pause", ScopeOperate, s.pauseGroup(true))
	s.api("POST /api/v1/groups/{name}/resume", ScopeOperate, s.pauseGroup(false))
	s.api("GET /api/v1/workers", ScopeRead, s.listWorkers)
	s.api("POST /api/v1/workers/{id}/drain", ScopeOperate, s.drainWorker)
	s.api("GET /api/v1/masters", ScopeRead, s.listMasters)
	s.api("GET /api/v1/failovers", ScopeRead, s.listFailovers)
	s.api("GET /api/v1/audit", ScopeOperate, s.listAudit)
	s.workflowRoutes()
	s.uiRoutes() // HTML, not part of the API document
	return s, nil
}

// Routes lists every route served.
func (s *Server) Routes() []Route { return s.routes }

// ServeHTTP serves the API.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes)
	s.mux.ServeHTTP(w, r)
}

func (s *Server) handle(pattern, scope string, h http.HandlerFunc) {
	method, path, _ := strings.Cut(pattern, " ")
	s.routes = append(s.routes, Route{method, path, scope})
	s.mux.HandleFunc(pattern, h)
}

// apiHandler serves one API call for the token's actor; an error it returns
// becomes the response (httpError's status, else 500).
type apiHandler func(w http.ResponseWriter, r *http.Request, who taskops.Actor) error

func (s *Server) api(pattern, scope string, h apiHandler) {
	s.handle(pattern, scope, func(w http.ResponseWriter, r *http.Request) {
		who, err := s.authenticate(r, scope)
		if err == nil {
			err = h(w, r, who)
		}
		if err != nil {
			s.fail(w, r, err)
		}
	})
}

// httpError is an error with its status and the message the client sees.
type httpError struct {
	status int
	msg    string
}

func (e *httpError) Error() string { return e.msg }

func errorf(status int, format string, args ...any) error {
	return &httpError{status, fmt.Sprintf(format, args...)}
}

func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	var he *httpError
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &he):
	case errors.As(err, &mbe):
		he = &httpError{http.StatusRequestEntityTooLarge, fmt.Sprintf("request body is larger than the limit of %d bytes", mbe.Limit)}
	case errors.Is(err, submit.ErrInvalid):
		he = &httpError{http.StatusBadRequest, err.Error()}
	case errors.Is(err, submit.ErrUnknownGroup):
		he = &httpError{http.StatusUnprocessableEntity, err.Error()}
	case errors.Is(err, taskops.ErrNotFound):
		he = &httpError{http.StatusNotFound, err.Error()}
	default:
		s.log.Error("http api", zap.String("method", r.Method), zap.String("path", r.URL.Path), zap.Error(err))
		he = &httpError{http.StatusInternalServerError, "internal error (logged by the server)"}
		if r.Context().Err() != nil {
			he.msg = "request canceled"
		}
	}
	if he.status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="baton"`)
	}
	writeJSON(w, he.status, apimodel.Error{Error: he.msg})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// authenticate checks the bearer token and its scope.
func (s *Server) authenticate(r *http.Request, scope string) (taskops.Actor, error) {
	h := r.Header.Get("Authorization")
	tok, ok := strings.CutPrefix(h, "Bearer ")
	if !ok || tok == "" {
		return taskops.Actor{}, errorf(http.StatusUnauthorized, "missing bearer token: send Authorization: Bearer <token> (baton token create)")
	}
	var row db.TokenLookupRow
	err := s.tx(r.Context(), func(q *db.Queries) error {
		var err error
		row, err = q.TokenLookup(r.Context(), HashToken(strings.TrimSpace(tok)))
		return err
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return taskops.Actor{}, errorf(http.StatusUnauthorized, "unknown or revoked token")
	}
	if err != nil {
		return taskops.Actor{}, fmt.Errorf("look up token: %w", err)
	}
	if scope == ScopeOperate && row.Scope != ScopeOperate {
		return taskops.Actor{}, errorf(http.StatusForbidden, "token %q has scope %s; this call needs operate", row.Name, row.Scope)
	}
	return taskops.Actor{TokenID: row.ID, Name: "token:" + row.Name}, nil
}

// tx runs fn in a transaction with baton's schema as search_path.
func (s *Server) tx(ctx context.Context, fn func(q *db.Queries) error) error {
	return pgx.BeginFunc(ctx, s.cfg.Pool, func(tx pgx.Tx) error {
		q := db.New(tx)
		if err := q.SchemaSetLocalSearchPath(ctx, s.cfg.Schema); err != nil {
			return err
		}
		return fn(q)
	})
}

func (s *Server) livez(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

// readyz: the database answers within 2 s and its schema is at the version
// this binary was built for.
func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	var v int64
	err := pgx.BeginFunc(ctx, s.cfg.Pool, func(tx pgx.Tx) error {
		if err := db.New(tx).SchemaSetLocalSearchPath(ctx, s.cfg.Schema); err != nil {
			return err
		}
		// goose's version table is not in sqlc's schema (migrations create it
		// through goose): the package's one hand-written statement.
		return tx.QueryRow(ctx, `SELECT coalesce(max(version_id), 0) FROM goose_db_version`).Scan(&v)
	})
	want := migrate.LatestEmbedded()
	switch {
	case err != nil:
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"status": "unavailable", "error": "database: " + oneLine(err)})
	case v != want:
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"status": "unavailable",
			"error": fmt.Sprintf("schema %q is at version %d, this build needs %d", s.cfg.Schema, v, want)})
	default:
		writeJSON(w, http.StatusOK, map[string]any{"status": "ok", "schema_version": v})
	}
}

func oneLine(err error) string { return strings.ReplaceAll(err.Error(), "\n", " ") }

// decode reads a JSON body into v, refusing unknown fields and trailing data.
func decode(r *http.Request, v any) error {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return err
		}
		if errors.Is(err, io.EOF) {
			return errorf(http.StatusBadRequest, "request body is empty: send a JSON object")
		}
		return errorf(http.StatusBadRequest, "request body: %v", err)
	}
	if dec.More() {
		return errorf(http.StatusBadRequest, "request body: data after the JSON object")
	}
	return nil
}

func pathID(r *http.Request) (int64, error) {
	s := r.PathValue("id")
	id, err := strconv.ParseInt(s, 10, 64)
	if err != nil || id <= 0 {
		return 0, errorf(http.StatusBadRequest, "id %q is not a positive integer", s)
	}
	return id, nil
}

func queryInt(r *http.Request, name string, def, lo, hi int64) (int64, error) {
	s := r.URL.Query().Get(name)
	if s == "" {
		return def, nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < lo || n > hi {
		return 0, errorf(http.StatusBadRequest, "query parameter %s=%q: want an integer in %d..%d", name, s, lo, hi)
	}
	return n, nil
}

func queryBool(r *http.Request, name string) (bool, error) {
	s := r.URL.Query().Get(name)
	if s == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(s)
	if err != nil {
		return false, errorf(http.StatusBadRequest, "query parameter %s=%q: want true or false", name, s)
	}
	return b, nil
}

func nilIfEmpty(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}
