// Package logfield is the one place log keys are spelled, so they never drift.
package logfield

import "go.uber.org/zap"

func TaskID(id int64) zap.Field         { return zap.Int64("task_id", id) }
func Attempt(a int32) zap.Field         { return zap.Int32("attempt", a) }
func SessionID(id int64) zap.Field      { return zap.Int64("session_id", id) }
func SessionIDs(ids []int64) zap.Field  { return zap.Int64s("session_ids", ids) }
func DeadSessionID(id int64) zap.Field  { return zap.Int64("dead_session_id", id) }
func MasterID(id int64) zap.Field       { return zap.Int64("master_id", id) }
func Group(g string) zap.Field          { return zap.String("group", g) }
func Groups(gs []string) zap.Field      { return zap.Strings("groups", gs) }
func Outcome(o string) zap.Field        { return zap.String("outcome", o) }
func Count(key string, n int) zap.Field { return zap.Int("num_"+key, n) }
func BatchSize(n int) zap.Field         { return zap.Int("batch_size", n) }
func Kind(k string) zap.Field           { return zap.String("kind", k) }
func Containment(m string) zap.Field    { return zap.String("containment", m) }
func Reason(r string) zap.Field         { return zap.String("reason", r) }
func RunID(id int64) zap.Field          { return zap.Int64("run_id", id) }
func RunState(s string) zap.Field       { return zap.String("run_state", s) }
