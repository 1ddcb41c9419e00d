package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Env looks up an environment variable; cmd passes os.Getenv, tests a map.
type Env func(string) string

// envDefault returns the environment's value for key, or def.
func envDefault(env Env, key, def string) string {
	if v := env(key); v != "" {
		return v
	}
	return def
}

func envDuration(env Env, key string, def time.Duration) (time.Duration, error) {
	v := env(key)
	if v == "" {
		return def, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("%s=%q: %w", key, v, err)
	}
	return d, nil
}

func envInt(env Env, key string, def int) (int, error) {
	v := env(key)
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, fmt.Errorf("%s=%q is not an integer", key, v)
	}
	return n, nil
}

// MaxDuration bounds every duration setting of the daemons. Nothing baton times
// needs more, and the bound keeps cross-field rules (timeout ≥ 2 × heartbeat)
// away from time.Duration overflow, where 2 × 2,000,000h is negative.
const MaxDuration = 24 * time.Hour

// checkDurations refuses a duration flag (or the environment variable that set
// its default) outside 0..MaxDuration; Validate judges the finer ranges.
func checkDurations(fs *flag.FlagSet) error {
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		g, ok := f.Value.(flag.Getter)
		if !ok {
			return
		}
		if d, ok := g.Get().(time.Duration); ok && d > MaxDuration {
			errs = append(errs, fmt.Errorf("--%s %s is longer than %s, the limit of any duration setting", f.Name, d, MaxDuration))
		}
	})
	return errors.Join(errs...)
}

func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// newLogger builds the process logger: JSON lines by default, console for humans.
func newLogger(level, format string) (*zap.Logger, error) {
	var lvl zapcore.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log level %q: use debug, info, warn or error", level)
	}
	var cfg zap.Config
	switch strings.ToLower(format) {
	case "json", "":
		cfg = zap.NewProductionConfig()
	case "console":
		cfg = zap.NewDevelopmentConfig()
	default:
		return nil, fmt.Errorf("log format %q: use json or console", format)
	}
	cfg.Level = zap.NewAtomicLevelAt(lvl)
	cfg.OutputPaths = []string{"stderr"}
	cfg.Sampling = nil
	return cfg.Build()
}

// exitCode prints err and returns the process exit code (0 for -h).
func exitCode(stderr io.Writer, prog string, err error) int {
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return 0
	}
	fmt.Fprintf(stderr, "%s: %v\n", prog, err)
	return 1
}

// OSEnv is the real environment.
func OSEnv(key string) string { return os.Getenv(key) }

// dsnValue is the --database-url flag: it prints as nothing, so --help never
// shows the URL taken from the environment (and its password).
type dsnValue struct{ p *string }

func (v dsnValue) String() string { return "" }

func (v dsnValue) Set(s string) error { *v.p = s; return nil }

// dsnVar defines --database-url, defaulting to BATON_DATABASE_URL.
func dsnVar(fs *flag.FlagSet, p *string, env Env) {
	*p = env("BATON_DATABASE_URL")
	fs.Var(dsnValue{p}, "database-url", "Postgres URL (default: env BATON_DATABASE_URL; prefer the env, a flag shows in ps)")
}
