package worker

import "testing"

// Init arms every signal (tests only).
func (s *TestSignals) Init(t testing.TB) {
	s.Registered.Init(t)
	s.Heartbeat.Beat.Init(t)
	s.Heartbeat.BeatFailed.Init(t)
	s.Heartbeat.BeatSent.Init(t)
	s.Heartbeat.Fenced.Init(t)
	s.Heartbeat.Lost.Init(t)
	s.Liveness.Held.Init(t)
	s.Liveness.Lost.Init(t)
	s.Liveness.Promised.Init(t)
	s.Liveness.Pinged.Init(t)
	s.Claimer.Claimed.Init(t)
	s.Claimer.ClaimFailed.Init(t)
	s.Claimer.Started.Init(t)
	s.Claimer.Settled.Init(t)
	s.Claimer.Abandoned.Init(t)
	s.Claimer.LateResult.Init(t)
	s.Completer.Added.Init(t)
	s.Completer.Flushed.Init(t)
	s.Completer.FlushFailed.Init(t)
	s.Completer.BackPressed.Init(t)
	s.Drain.Drained.Init(t)
}
