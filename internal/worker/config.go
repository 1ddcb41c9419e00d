package worker

import (
	"errors"
	"fmt"
	"regexp"
	"time"

	"go.uber.org/zap"

	"github.com/baton-scheduler/baton/internal/claimer"
	"github.com/baton-scheduler/baton/internal/executor"
	"github.com/baton-scheduler/baton/internal/metrics"
	"github.com/baton-scheduler/baton/internal/service"
)

// Defaults; see DESIGN: heartbeat 1 s, dead after 5 s, self-fence at 4 s.
const (
	HeartbeatIntervalDefault = time.Second
	SelfFenceAfterDefault    = 4 * time.Second
	PollIntervalDefault      = 500 * time.Millisecond
	ShutdownGraceDefault     = 10 * time.Second
	KillGraceDefault         = claimer.KillGraceDefault
	SlotsDefault             = 4
	// CrashDetectAfterDefault equals the masters' --crash-detect-after default.
	CrashDetectAfterDefault = 1500 * time.Millisecond
	GroupDefault            = "default"
	// MaxGroups bounds Config.Groups: each group is a session row heartbeated
	// in one statement and a claim loop polling on its own.
	MaxGroups = 64
)

// GroupSlots is one group a worker serves and how many of its tasks run at once.
type GroupSlots struct {
	Name  string
	Slots int
}

// CrashFenceDefault is the crash fence for a crash-detection age: 5/6 of it, which
// leaves the worker a sixth (250 ms at the defaults) to kill its tasks before a
// master may declare it dead.
func CrashFenceDefault(crashDetectAfter time.Duration) time.Duration {
	return crashDetectAfter * 5 / 6
}

// CrashDetectOff as Config.CrashDetectAfter: the worker promises no liveness lock
// and masters wait the heartbeat timeout for it (e.g. behind a transaction-mode
// pooler, which does not keep session advisory locks).
const CrashDetectOff time.Duration = -1

// groupRE mirrors the worker_groups_name_format constraint.
var groupRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$`)

// Config of a worker process.
type Config struct {
	DatabaseURL string
	Group       string // worker group served (created if missing)
	Name        string // operator-facing name; default host-pid
	Slots       int    // tasks run at once
	// Groups, instead of Group and Slots: several groups served by this one
	// worker, each with its own slots (one session row per group, see
	// docs/architecture.md "Many groups per worker").
	Groups            []GroupSlots
	HeartbeatInterval time.Duration // how often the session row is touched
	// SelfFenceAfter: without a successful heartbeat for this long the worker stops
	// claiming, kills its tasks and abandons the session. Must stay below the
	// masters' worker timeout (timeout − margin) so it acts before failover.
	SelfFenceAfter time.Duration
	// CrashDetectAfter must equal the masters' --crash-detect-after (default 1.5 s;
	// CrashDetectOff disables). When on, the worker holds its session's liveness
	// advisory lock on a dedicated connection (it needs a direct session to
	// Postgres, not a transaction-mode pooler) and promises it, so masters declare
	// a crashed worker dead after CrashDetectAfter instead of the heartbeat timeout.
	CrashDetectAfter time.Duration
	// CrashFenceAfter: while the promised lock is not held (its connection failed,
	// Postgres restarted), the self-fence fires this long after the last
	// successful heartbeat instead of SelfFenceAfter. Must be below
	// CrashDetectAfter and above the heartbeat interval; default 5/6 of
	// CrashDetectAfter (1.25 s).
	CrashFenceAfter time.Duration
	PollInterval    time.Duration // claim polling fallback when no NOTIFY arrives
	ShutdownGrace   time.Duration // how long SIGTERM waits for running tasks
	// KillGrace: once an attempt timed out or was killed, how long it may take to
	// return before its slot is freed without it (a Go handler that ignores
	// cancellation, a shell task whose detached child keeps its output open). A
	// timed-out attempt is then reported timed_out; a late result is dropped.
	KillGrace time.Duration
	MaxOutput int // bytes of stdout+stderr kept per attempt
	Handlers  map[string]executor.Handler
	Logger    *zap.Logger
	Version   string
	// Metrics, if set, counts attempts, fenced results and self-fences and
	// times heartbeats and claims; the caller registers and serves it
	// (baton-worker --metrics-addr).
	Metrics *metrics.Worker
	// OnRegistered, if set, is called with each session the worker registers
	// (the first: the worker is ready; baton-worker tells systemd).
	OnRegistered func(sessionID int64)
	// Clock is the services' process clock (log timestamps; never a liveness
	// decision). The self-fence does not read it: it is a timer on the monotonic
	// clock, so a wall-clock jump moves it neither way. Tests inject a stub.
	Clock *service.Clock
	// Test holds knobs for tests only.
	Test TestConfig

	// AllowShell runs shell tasks; without it they fail, saying so. The
	// baton-worker binary sets it; embedded workers opt in (baton.WorkerConfig).
	AllowShell bool
	// ShellEnvAllow lists the worker variables a shell task inherits
	// (nil: executor.DefaultShellEnvAllow).
	ShellEnvAllow []string
}

// TestConfig holds test-only knobs; zero values mean production behaviour.
type TestConfig struct {
	// HeartbeatCallTimeout bounds one heartbeat statement (default SelfFenceAfter/2).
	HeartbeatCallTimeout time.Duration
	// ResultFlushInterval: how long the first buffered result waits for others
	// before the batch is written (default completer.FlushIntervalDefault).
	ResultFlushInterval time.Duration
}

// WithDefaults returns a copy with every zero field set to its default.
func (c Config) WithDefaults() Config {
	if len(c.Groups) == 0 {
		if c.Group == "" {
			c.Group = GroupDefault
		}
		if c.Slots == 0 {
			c.Slots = SlotsDefault
		}
	}
	if c.HeartbeatInterval == 0 {
		c.HeartbeatInterval = HeartbeatIntervalDefault
	}
	if c.SelfFenceAfter == 0 {
		c.SelfFenceAfter = SelfFenceAfterDefault
	}
	if c.CrashDetectAfter == 0 {
		c.CrashDetectAfter = CrashDetectAfterDefault
	}
	if c.CrashFenceAfter == 0 && c.CrashDetectAfter > 0 {
		c.CrashFenceAfter = CrashFenceDefault(c.CrashDetectAfter)
	}
	if c.PollInterval == 0 {
		c.PollInterval = PollIntervalDefault
	}
	if c.ShutdownGrace == 0 {
		c.ShutdownGrace = ShutdownGraceDefault
	}
	if c.MaxOutput == 0 {
		c.MaxOutput = executor.DefaultMaxOutput
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	if c.KillGrace == 0 {
		c.KillGrace = KillGraceDefault
	}
	if c.Clock == nil {
		c.Clock = service.NewClock()
	}
	return c
}

// Validate checks ranges and cross-field rules.
func (c Config) Validate() error {
	var errs []error
	if c.DatabaseURL == "" {
		errs = append(errs, errors.New("database URL is empty: set BATON_DATABASE_URL or --database-url"))
	}
	if len(c.Groups) > 0 {
		errs = append(errs, c.validateGroups()...)
	} else {
		if !groupRE.MatchString(c.Group) {
			errs = append(errs, fmt.Errorf("group %q must be 1-63 of letters, digits, _ . - starting with a letter or digit", c.Group))
		}
		if c.Slots < 1 || c.Slots > 10000 {
			errs = append(errs, fmt.Errorf("slots %d is outside 1..10000", c.Slots))
		}
	}
	if c.HeartbeatInterval < 10*time.Millisecond {
		errs = append(errs, fmt.Errorf("heartbeat interval %s is below 10ms", c.HeartbeatInterval))
	}
	if c.SelfFenceAfter < 2*c.HeartbeatInterval {
		errs = append(errs, fmt.Errorf("self-fence after %s must be at least twice the heartbeat interval %s", c.SelfFenceAfter, c.HeartbeatInterval))
	}
	if c.CrashDetectAfter != CrashDetectOff && c.CrashDetectAfter < 0 {
		errs = append(errs, fmt.Errorf("crash detection age %s is negative (0 on the command line disables it)", c.CrashDetectAfter))
	}
	if c.CrashDetectAfter > 0 {
		if c.CrashFenceAfter >= c.CrashDetectAfter {
			errs = append(errs, fmt.Errorf("crash fence %s must be below the crash detection age %s (a master may declare the worker dead then)", c.CrashFenceAfter, c.CrashDetectAfter))
		}
		if c.CrashFenceAfter <= c.HeartbeatInterval {
			errs = append(errs, fmt.Errorf("crash fence %s must be above the heartbeat interval %s", c.CrashFenceAfter, c.HeartbeatInterval))
		}
	}
	if c.PollInterval <= 0 {
		errs = append(errs, fmt.Errorf("poll interval %s must be positive", c.PollInterval))
	}
	if c.KillGrace < 0 {
		errs = append(errs, fmt.Errorf("kill grace %s is negative", c.KillGrace))
	}
	if c.ShutdownGrace < 0 {
		errs = append(errs, fmt.Errorf("shutdown grace %s is negative", c.ShutdownGrace))
	}
	return errors.Join(errs...)
}

func (c Config) validateGroups() []error {
	var errs []error
	if c.Group != "" || c.Slots != 0 {
		errs = append(errs, fmt.Errorf("both group %q (slots %d) and groups are set: set Group and Slots for one group, or Groups for several", c.Group, c.Slots))
	}
	if len(c.Groups) > MaxGroups {
		errs = append(errs, fmt.Errorf("%d groups is more than %d", len(c.Groups), MaxGroups))
	}
	seen := make(map[string]bool, len(c.Groups))
	for _, g := range c.Groups {
		if !groupRE.MatchString(g.Name) {
			errs = append(errs, fmt.Errorf("group %q must be 1-63 of letters, digits, _ . - starting with a letter or digit", g.Name))
		}
		if seen[g.Name] {
			errs = append(errs, fmt.Errorf("group %q is named twice", g.Name))
		}
		seen[g.Name] = true
		if g.Slots < 1 || g.Slots > 10000 {
			errs = append(errs, fmt.Errorf("slots %d of group %q is outside 1..10000", g.Slots, g.Name))
		}
	}
	return errs
}

// Served is the groups the worker serves with their slots: Groups, or the one
// Group with Slots.
func (c Config) Served() []GroupSlots {
	if len(c.Groups) > 0 {
		return append([]GroupSlots(nil), c.Groups...)
	}
	return []GroupSlots{{Name: c.Group, Slots: c.Slots}}
}
