package workflow

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// FuzzParseWorkflow: any YAML either parses and validates, or is refused with
// a validation error (never a panic, never another kind of error), and a valid
// definition has a canonical form.
func FuzzParseWorkflow(f *testing.F) {
	files, _ := filepath.Glob("../../examples/workflows/*.yaml")
	for _, p := range files {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte("name: m\nsteps:\n  - {name: a, group: g, kind: k, map: {over: \"${params.x}\", parallelism: -1}}\n"))
	f.Add([]byte("name: s\nsteps:\n  - {name: a, workflow: s, params: {x: \"${steps.a.outputs.y}\"}}\n"))
	f.Add([]byte("name: r\nsteps:\n  - {name: a, group: g, shell: \"echo ${map.item}\"}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := Parse(data)
		if err == nil {
			err = d.Validate()
		}
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("not a validation error: %v", err)
			}
			return
		}
		if _, _, err := d.Canonical(); err != nil {
			t.Fatalf("valid definition without a canonical form: %v", err)
		}
	})
}
