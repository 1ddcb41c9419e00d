package store

import (
	"fmt"
	"net"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// Connection defaults for baton's own sessions. A DSN that names one of the runtime
// parameters (e.g. ?lock_timeout=2s) keeps its own value.
const (
	// IdleInTransactionTimeoutDefault ends a session that sits idle inside a
	// transaction (a frozen or partitioned process) and releases its locks.
	IdleInTransactionTimeoutDefault = 10 * time.Second
	// LockTimeoutDefault bounds every lock wait (row, advisory, DDL) of a statement.
	LockTimeoutDefault = 10 * time.Second
	// TCPUserTimeoutDefault: a connection whose sent data stays unacknowledged this
	// long is closed by the kernel (Linux TCP_USER_TIMEOUT), so a silent partition
	// turns into an error instead of a read that hangs for the retransmission
	// timeout (~15 minutes).
	TCPUserTimeoutDefault = 10 * time.Second
	// TCP keepalive probes an idle connection after KeepAliveIdle, every
	// KeepAliveInterval, and gives up after KeepAliveCount unanswered probes.
	KeepAliveIdle     = 5 * time.Second
	KeepAliveInterval = 2 * time.Second
	KeepAliveCount    = 3
)

// runtimeParamDefaults are set on every connection unless the DSN sets them.
var runtimeParamDefaults = map[string]string{
	"idle_in_transaction_session_timeout": ms(IdleInTransactionTimeoutDefault),
	"lock_timeout":                        ms(LockTimeoutDefault),
}

// ms spells d in a unit Postgres accepts.
func ms(d time.Duration) string { return fmt.Sprintf("%dms", d.Milliseconds()) }

// applyConnDefaults gives cfg baton's session parameters and a dialer with TCP
// keepalive and (on Linux) TCP_USER_TIMEOUT, keeping the DSN's connect_timeout.
func applyConnDefaults(cfg *pgconn.Config) {
	for k, v := range runtimeParamDefaults {
		if _, ok := cfg.RuntimeParams[k]; !ok {
			cfg.RuntimeParams[k] = v
		}
	}
	d := Dialer(cfg.ConnectTimeout)
	cfg.DialFunc = d.DialContext
}

// Dialer returns the dialer baton connects to Postgres with: TCP keepalive on idle
// connections and a bound on unacknowledged data (Linux), so a connection behind a
// silent partition fails instead of hanging.
func Dialer(connectTimeout time.Duration) *net.Dialer {
	return &net.Dialer{
		Timeout: connectTimeout,
		KeepAliveConfig: net.KeepAliveConfig{
			Enable: true, Idle: KeepAliveIdle, Interval: KeepAliveInterval, Count: KeepAliveCount,
		},
		Control: setUserTimeout(TCPUserTimeoutDefault),
	}
}
