package state_test

import (
	"context"
	"os"
	"regexp"
	"slices"
	"testing"

	"github.com/baton-scheduler/baton/batontest"
	"github.com/baton-scheduler/baton/internal/state"
)

var srv *batontest.Server

func TestMain(m *testing.M) {
	os.Exit(batontest.MainNoLeaks(m, func(s *batontest.Server) { srv = s }))
}

// Every set of names equals what the schema's CHECK constraint allows.
func TestNamesMatchSchema(t *testing.T) {
	t.Parallel()
	pool, _ := srv.NewPool(t)
	literal := regexp.MustCompile(`'([a-z_]+)'::text`)
	for constraint, want := range map[string][]string{
		"tasks_state":           state.TaskStates,
		"task_attempts_outcome": state.Outcomes,
		"worker_sessions_state": state.WorkerSessions,
		"master_sessions_state": state.MasterSessions,
		"task_attempts_reason":  state.Reasons,
		"dispatch_queue_reason": state.Reasons,
		"tasks_attempt_reason":  state.Reasons,
		"tasks_queued_reason":   state.Reasons,
		"failover_events_kind":  state.Kinds,
		"tasks_finished":        {state.TaskSucceeded, state.TaskFailed, state.TaskTimedOut, state.TaskCanceled},
		"tasks_owner":           {state.TaskDispatched, state.TaskRunning},
		"worker_sessions_ended": {state.SessionDead, state.SessionStopped},
		"master_sessions_ended": {state.SessionDead, state.SessionStopped},
	} {
		var def string
		if err := pool.QueryRow(context.Background(),
			"SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = $1", constraint).Scan(&def); err != nil {
			t.Fatalf("%s: %v", constraint, err)
		}
		var got []string
		for _, m := range literal.FindAllStringSubmatch(def, -1) {
			got = append(got, m[1])
		}
		slices.Sort(got)
		w := slices.Clone(want)
		slices.Sort(w)
		if !slices.Equal(got, w) {
			t.Errorf("%s allows %v, package state has %v (%s)", constraint, got, w, def)
		}
	}
	for _, s := range state.TaskStates {
		terminal := slices.Contains([]string{state.TaskSucceeded, state.TaskFailed, state.TaskTimedOut, state.TaskCanceled}, s)
		if state.TaskTerminal(s) != terminal {
			t.Errorf("TaskTerminal(%s) = %v", s, !terminal)
		}
	}
}
