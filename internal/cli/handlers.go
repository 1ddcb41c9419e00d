package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/baton-scheduler/baton/internal/executor"
)

// BuiltinHandlers are the Go handlers baton-worker carries: "noop" (benchmarks)
// and "sleep" ({"ms": N}, honours cancellation).
func BuiltinHandlers() map[string]executor.Handler {
	return map[string]executor.Handler{
		"noop": func(context.Context, executor.Task) (string, error) { return "", nil },
		"sleep": func(ctx context.Context, t executor.Task) (string, error) {
			var p struct {
				MS int `json:"ms"`
			}
			if err := json.Unmarshal(t.Payload, &p); err != nil {
				return "", fmt.Errorf("sleep payload: %w", err)
			}
			select {
			case <-time.After(time.Duration(p.MS) * time.Millisecond):
				return fmt.Sprintf("slept %dms", p.MS), nil
			case <-ctx.Done():
				return "", ctx.Err()
			}
		},
	}
}
