package workflow

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func chain(names ...string) Definition {
	d := Definition{Name: "wf"}
	for i, n := range names {
		s := Step{Name: n, Group: "g", Kind: "noop"}
		if i > 0 {
			s.DependsOn = []string{names[i-1]}
		}
		d.Steps = append(d.Steps, s)
	}
	return d
}

// Every validation error names its problem and its place.
func TestValidateMessages(t *testing.T) {
	t.Parallel()
	def := func(edit func(d *Definition)) Definition {
		d := chain("a", "b", "c")
		edit(&d)
		return d
	}
	tests := []struct {
		name string
		d    Definition
		want string
	}{
		{"cycle with its path", def(func(d *Definition) { d.Steps[0].DependsOn = []string{"c"} }),
			"steps: cycle: a -> b -> c -> a"},
		{"unknown dependency", def(func(d *Definition) { d.Steps[1].DependsOn = []string{"nope"} }),
			`steps[1] (b).depends_on[0]: unknown step "nope"`},
		{"self dependency", def(func(d *Definition) { d.Steps[1].DependsOn = []string{"b"} }),
			`steps[1] (b).depends_on[0]: a step cannot depend on itself`},
		{"duplicate step", def(func(d *Definition) { d.Steps[2].Name = "a"; d.Steps[2].DependsOn = nil }),
			`steps[2] (a).name: duplicate step name "a" (also steps[0])`},
		{"unknown parameter", def(func(d *Definition) { d.Steps[0].Payload = map[string]any{"x": "${params.day}"} }),
			`steps[0] (a).payload: reference ${params.day}: unknown parameter "day"`},
		{"bad duration", def(func(d *Definition) { d.Steps[2].Timeout = "3 minutes" }),
			`steps[2] (c).timeout: bad duration "3 minutes" (write e.g. 30s, 5m, 1h)`},
		{"bad backoff duration", def(func(d *Definition) { d.Steps[1].RetryBackoffBase = "1x"; d.Steps[1].RetryBackoffMax = "1m" }),
			`steps[1] (b).retry_backoff_base: bad duration "1x"`},
		{"output of a step that is not upstream", def(func(d *Definition) {
			d.Steps[2].Outputs = []string{"path"}
			d.Steps[0].Payload = map[string]any{"x": "${steps.c.outputs.path}"}
		}), `steps[0] (a).payload: reference ${steps.c.outputs.path}: step "c" is not upstream of "a"`},
		{"output no upstream step declares", def(func(d *Definition) {
			d.Steps[0].Outputs = []string{"path"}
			d.Steps[2].Payload = map[string]any{"x": "${steps.a.outputs.size}"}
		}), `steps[2] (c).payload: reference ${steps.a.outputs.size}: step "a" declares no output "size" (its outputs: [path])`},
		{"output of an unknown step", def(func(d *Definition) { d.Steps[2].Payload = map[string]any{"x": "${steps.zz.outputs.k}"} }),
			`steps[2] (c).payload: reference ${steps.zz.outputs.k}: unknown step "zz"`},
		{"unknown trigger rule", def(func(d *Definition) { d.Steps[1].TriggerRule = "most_success" }),
			`steps[1] (b).trigger_rule: unknown trigger rule "most_success"`},
		{"shell and kind", def(func(d *Definition) { d.Steps[0].Shell = "true" }),
			`steps[0] (a): set shell or kind, not both`},
		{"no steps", Definition{Name: "wf"}, "steps: a workflow needs at least one step"},
		{"bad run timeout", def(func(d *Definition) { d.Timeout = "forever" }), `timeout: bad duration "forever"`},
		{"bad name", def(func(d *Definition) { d.Name = "a b" }), `name: "a b" must be`},
		{"bad strategy", def(func(d *Definition) { d.FailureStrategy = "halt" }), `failure_strategy: unknown failure strategy "halt"`},
		{"bad param default", def(func(d *Definition) { d.Params = []Param{{Name: "n", Type: "int", Default: ptr("x")}} }),
			"params[0] (n).default: parameter n: x is not an int"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := tt.d.Validate()
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Validate = %v; want ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate = %q\nwant it to contain %q", err, tt.want)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

func TestValidateAccepts(t *testing.T) {
	t.Parallel()
	d := chain("a", "b", "c")
	d.Params = []Param{{Name: "day", Default: ptr("2026-01-01")}}
	d.Steps[0].Outputs = []string{"path"}
	d.Steps[2].Payload = map[string]any{"file": "${steps.a.outputs.path}/${params.day}"}
	d.Steps[2].TriggerRule = OneSuccess
	d.Steps[1].Shell, d.Steps[1].Kind = "echo ${params.day}", ""
	if err := d.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestParseYAML(t *testing.T) {
	t.Parallel()
	d, err := Parse([]byte(`
name: etl
params:
  - {name: day, default: "2026-01-01"}
steps:
  - name: extract
    group: g
    kind: extract
    payload: {day: "${params.day}", n: 3}
    outputs: [path]
  - name: load
    group: g
    shell: echo ${steps.extract.outputs.path}
    depends_on: [extract]
    timeout: 5m
`))
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Validate(); err != nil {
		t.Fatal(err)
	}
	if _, err := Parse([]byte("name: x\nstepz: []\n")); err == nil || !strings.Contains(err.Error(), "stepz") {
		t.Fatalf("unknown field: %v", err)
	}
	// The canonical form does not depend on map order or formatting.
	_, h1, _ := d.Canonical()
	d2, _ := Parse([]byte(`
name: etl
params: [{name: day, default: "2026-01-01"}]
steps:
  - {name: extract, group: g, kind: extract, payload: {n: 3, day: "${params.day}"}, outputs: [path]}
  - {name: load, group: g, shell: "echo ${steps.extract.outputs.path}", depends_on: [extract], timeout: 5m}
`))
	_, h2, _ := d2.Canonical()
	if h1 != h2 {
		t.Fatal("same content, different hashes")
	}
}

func TestRunParams(t *testing.T) {
	t.Parallel()
	d := chain("a")
	d.Params = []Param{{Name: "n", Type: "int"}, {Name: "s", Default: ptr("x")}, {Name: "b", Type: "bool", Default: ptr("false")}}
	got, err := d.RunParams(map[string]any{"n": "7"})
	if err != nil || string(got) != `{"b":false,"n":7,"s":"x"}` {
		t.Fatalf("RunParams = %s, %v", got, err)
	}
	_, err = d.RunParams(map[string]any{"zz": "1"})
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), `params.n: required parameter not set`) ||
		!strings.Contains(err.Error(), `params.zz: unknown parameter "zz"`) {
		t.Fatalf("RunParams = %v", err)
	}
}

// Every example under examples/workflows parses and validates.
func TestExamplesValidate(t *testing.T) {
	files, err := filepath.Glob("../../examples/workflows/*.yaml")
	if err != nil || len(files) < 2 {
		t.Fatalf("examples: %v, %v", files, err)
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		d, err := Parse(data)
		if err == nil {
			err = d.Validate()
		}
		if err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
}
