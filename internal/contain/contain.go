// Package contain keeps a task's processes, with every descendant, from
// outliving the task attempt or the worker that runs it.
//
// Every task runs under a small supervisor (this binary re-executed, see
// supervisor_linux.go) that holds a pipe from the worker and kills the task's whole
// tree when that pipe closes — the worker exited, was SIGKILLed or OOM-killed,
// or killed the attempt. Where cgroup v2 is usable, each attempt also gets its own
// cgroup, created before the supervisor starts (clone3 CLONE_INTO_CGROUP), so
// the tree is killed at once with cgroup.kill whatever it did to escape, even if
// the supervisor itself is SIGKILLed. docs/architecture.md ("Process
// containment") says what is guaranteed where.
package contain

import (
	"errors"
	"io"
	"time"
)

// ErrLeaseExpired is the error of an Exit whose tree the supervisor killed
// because the worker's lease ran out (Manager.SetLease): the worker is frozen or
// cut off, and its attempt belongs to the failover.
var ErrLeaseExpired = errors.New("killed by its supervisor: the worker's lease expired")

// Mechanism is how task trees are contained.
type Mechanism string

const (
	// Auto uses a cgroup per attempt when cgroup v2 is usable, else the supervisor alone.
	Auto Mechanism = ""
	// Cgroup requires a cgroup per attempt (plus the supervisor); Open fails without one.
	Cgroup Mechanism = "cgroup"
	// Supervisor uses the supervising parent (child subreaper, life pipe, Pdeathsig) only.
	Supervisor Mechanism = "supervisor"
)

// Bounds on waits, so no kill can hold a slot forever.
const (
	// KillGrace is how long a supervisor is given to kill its tree and exit after
	// the worker asks; then it is SIGKILLed along with the shell's process group.
	KillGrace = 3 * time.Second
	// OutputGrace is how long output is still read after the supervisor exited;
	// a process outside every kill's reach that holds the pipe cannot block the
	// attempt longer (exec.Cmd.WaitDelay).
	OutputGrace = 2 * time.Second
	// removeGrace bounds the wait for a killed cgroup to empty before rmdir.
	removeGrace = 10 * time.Second
)

// Options configure a Manager.
type Options struct {
	Mechanism Mechanism
	// CgroupDir names the directory under the worker's own cgroup that holds the
	// cgroups of every worker sharing it (default "baton"). A worker removes the
	// leftovers of dead workers in its own CgroupDir only.
	CgroupDir string
	// FrozenAfter, if set, makes the worker ping every supervisor over its life
	// pipe every FrozenAfter/8; a supervisor that hears nothing for FrozenAfter
	// kills its tree. A frozen worker (SIGSTOP, a VM or GC stall) cannot fence
	// itself: this keeps its tasks from running on while masters move them. Set it
	// below the masters' worker timeout (a worker uses its self-fence deadline).
	FrozenAfter time.Duration
}

// Command is one program to run contained.
type Command struct {
	Args   []string // Args[0] is the program's absolute path
	Env    []string // the complete environment (nothing is inherited)
	Dir    string
	Stdout io.Writer
	Stderr io.Writer
	Name   string // names the attempt's cgroup, e.g. "task-7-2"
}

// Exit is how a contained program ended.
type Exit struct {
	Code int   // exit code; -1 when killed by a signal or unknown
	Err  error // nil for exit code 0
}
