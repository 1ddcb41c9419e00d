// Package workflow holds the definition model of baton's workflows (versioned
// DAGs of tasks), its validation, its YAML form and its storage as immutable
// versions. Runs advance in SQL (migrations/00005_workflows.sql): this package
// only describes and stores what they run. docs/workflows.md.
package workflow

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Definition is a workflow: named steps, each a task, and the dependencies
// between them. The YAML form (Parse) and the Go form are the same model.
type Definition struct {
	// Name identifies the workflow; applying a definition of the same name
	// stores a new version of it if the content changed.
	Name        string `json:"name" yaml:"name"`
	Description string `json:"description,omitempty" yaml:"description,omitempty"`
	// Params are the run parameters; payloads reference them as ${params.NAME}.
	Params []Param `json:"params,omitempty" yaml:"params,omitempty"`
	// FailureStrategy is the default of runs that do not choose one:
	// "continue" (default) or "end".
	FailureStrategy string `json:"failure_strategy,omitempty" yaml:"failure_strategy,omitempty"`
	// Timeout bounds a whole run ("2h"; empty: none): past it a master ends
	// the run failed and cancels its live tasks.
	Timeout string `json:"timeout,omitempty" yaml:"timeout,omitempty"`
	Steps   []Step `json:"steps" yaml:"steps"`
}

// Param is a run parameter.
type Param struct {
	Name string `json:"name" yaml:"name"`
	// Type is string (default), int, number or bool.
	Type string `json:"type,omitempty" yaml:"type,omitempty"`
	// Default is used when a run does not set the parameter; a parameter
	// without a default must be set by every run.
	Default *string `json:"default,omitempty" yaml:"default,omitempty"`
}

// Step is one task of the workflow.
type Step struct {
	Name string `json:"name" yaml:"name"`
	// Group is the worker group that runs the step's task.
	Group string `json:"group" yaml:"group"`
	// Shell is a shell command (kind "shell"); otherwise Kind names a Go
	// handler and Payload is its input. Exactly one of the two.
	Shell string            `json:"shell,omitempty" yaml:"shell,omitempty"`
	Env   map[string]string `json:"env,omitempty" yaml:"env,omitempty"`
	Kind  string            `json:"kind,omitempty" yaml:"kind,omitempty"`
	// Payload is the handler's input (any JSON value, an object usually).
	Payload any `json:"payload,omitempty" yaml:"payload,omitempty"`
	// DependsOn names the steps this one waits for.
	DependsOn []string `json:"depends_on,omitempty" yaml:"depends_on,omitempty"`
	// TriggerRule decides, from the outcomes of DependsOn, whether the step
	// runs (default all_success; see TriggerRules).
	TriggerRule string `json:"trigger_rule,omitempty" yaml:"trigger_rule,omitempty"`
	// Outputs declares the keys of the JSON object the step's task returns,
	// which downstream payloads reference as ${steps.NAME.outputs.KEY}.
	Outputs    []string `json:"outputs,omitempty" yaml:"outputs,omitempty"`
	Priority   int      `json:"priority,omitempty" yaml:"priority,omitempty"`
	MaxRetries int      `json:"max_retries,omitempty" yaml:"max_retries,omitempty"`
	// Timeout bounds one attempt ("30s", "5m"; empty: none).
	Timeout string `json:"timeout,omitempty" yaml:"timeout,omitempty"`
	// RetryBackoffBase and RetryBackoffMax are the retry backoff (durations;
	// empty: the group's).
	RetryBackoffBase string `json:"retry_backoff_base,omitempty" yaml:"retry_backoff_base,omitempty"`
	RetryBackoffMax  string `json:"retry_backoff_max,omitempty" yaml:"retry_backoff_max,omitempty"`
	// Map makes the step a map step: one task per element of a JSON array
	// (the payload's ${map.item} and ${map.index} name the element and its
	// index); the step ends when every item has. Its outputs are "results"
	// (each item's outputs, in order, as a JSON array) and "count".
	Map *Map `json:"map,omitempty" yaml:"map,omitempty"`
	// Workflow makes the step a sub-workflow step: it starts a run of the
	// latest version of the named workflow and ends with it (succeeded,
	// failed, or canceled when the child was canceled or stopped). Its
	// outputs are "run_id" and "state". No group, shell, kind or payload.
	Workflow string `json:"workflow,omitempty" yaml:"workflow,omitempty"`
	// Params are the child run's parameters (strings; references allowed).
	Params map[string]string `json:"params,omitempty" yaml:"params,omitempty"`
}

// Map is what a map step fans out over.
type Map struct {
	// Over is one reference, ${params.P} or ${steps.S.outputs.K}, whose value
	// is a JSON array (a JSON array value, or a string holding one).
	Over string `json:"over" yaml:"over"`
	// MaxItems bounds the array (default DefaultMapMaxItems, at most
	// MaxMapItems): a longer one fails the step.
	MaxItems int `json:"max_items,omitempty" yaml:"max_items,omitempty"`
	// Parallelism bounds the item tasks queued or running at once (0: none).
	Parallelism int `json:"parallelism,omitempty" yaml:"parallelism,omitempty"`
}

// Map step limits.
const (
	DefaultMapMaxItems = 1000
	MaxMapItems        = 10000
)

// MaxItemsOrDefault is the map's item bound with its default.
func (m Map) MaxItemsOrDefault() int {
	if m.MaxItems == 0 {
		return DefaultMapMaxItems
	}
	return m.MaxItems
}

// OutputKeys are the keys downstream steps may reference: the declared
// outputs, or a map or sub-workflow step's fixed ones.
func (s Step) OutputKeys() []string {
	switch {
	case s.Map != nil:
		return []string{"count", "results"}
	case s.Workflow != "":
		return []string{"run_id", "state"}
	}
	return s.Outputs
}

// Trigger rules. "failed" upstreams below are those failed, upstream_failed
// or canceled.
const (
	AllSuccess              = "all_success"                 // all succeeded; else upstream_failed if any failed, else skipped
	AllDone                 = "all_done"                    // all ended, whatever the outcome
	AllFailed               = "all_failed"                  // all failed; else skipped
	OneSuccess              = "one_success"                 // as soon as one succeeded; else skipped if all skipped, else upstream_failed
	OneFailed               = "one_failed"                  // as soon as one failed; else skipped
	NoneFailed              = "none_failed"                 // all ended and none failed (skips allowed); else upstream_failed
	NoneFailedMinOneSuccess = "none_failed_min_one_success" // none failed and one succeeded; all skipped: skipped
	Always                  = "always"                      // all ended (same as all_done)
)

// TriggerRules lists the valid trigger rules.
var TriggerRules = []string{AllSuccess, AllDone, AllFailed, OneSuccess, OneFailed, NoneFailed, NoneFailedMinOneSuccess, Always}

// Failure strategies.
const (
	StrategyContinue = "continue"
	StrategyEnd      = "end"
)

// Limits.
const (
	MaxSteps        = 10000
	MaxPayloadBytes = 1 << 20
	KindShell       = "shell"
)

// ErrInvalid wraps every validation error.
var ErrInvalid = errors.New("invalid workflow")

// Problem is one validation error and where it is.
type Problem struct {
	Path string // e.g. steps[2] (load).depends_on[0]
	Msg  string
}

// ValidationError lists every problem of a definition.
type ValidationError struct{ Problems []Problem }

func (e *ValidationError) Error() string {
	var b strings.Builder
	b.WriteString("invalid workflow: ")
	for i, p := range e.Problems {
		if i > 0 {
			b.WriteString("; ")
		}
		if p.Path != "" {
			b.WriteString(p.Path + ": ")
		}
		b.WriteString(p.Msg)
	}
	return b.String()
}

// Is makes errors.Is(err, ErrInvalid) true.
func (e *ValidationError) Is(target error) bool { return target == ErrInvalid }

var (
	nameRE  = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$`)
	stepRE  = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_-]{0,127}$`)
	paramRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,62}$`)
	groupRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$`)
	kindRE  = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.:/-]{0,127}$`)
	// refRE finds references; the SQL resolver (workflow_resolve) uses the
	// same syntax.
	refRE = regexp.MustCompile(`\$\{([^}]*)\}`)
)

// Parse reads a definition in YAML (unknown fields are errors).
func Parse(data []byte) (Definition, error) {
	var d Definition
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&d); err != nil {
		return d, &ValidationError{Problems: []Problem{{Msg: "YAML: " + err.Error()}}}
	}
	d.Payloads()
	return d, nil
}

// Payloads converts YAML-decoded payloads (map[string]any with possibly
// map[any]any inside) to JSON-compatible values.
func (d *Definition) Payloads() {
	for i := range d.Steps {
		d.Steps[i].Payload = jsonable(d.Steps[i].Payload)
	}
}

func jsonable(v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			x[k] = jsonable(e)
		}
		return x
	case map[any]any:
		m := make(map[string]any, len(x))
		for k, e := range x {
			m[fmt.Sprint(k)] = jsonable(e)
		}
		return m
	case []any:
		for i, e := range x {
			x[i] = jsonable(e)
		}
		return x
	}
	return v
}

// RunTimeout is the run timeout (0: none); the definition must be valid.
func (d Definition) RunTimeout() time.Duration {
	t, _ := duration(d.Timeout)
	return t
}

// Strategy returns the definition's failure strategy with its default.
func (d Definition) Strategy() string {
	if d.FailureStrategy == "" {
		return StrategyContinue
	}
	return d.FailureStrategy
}

// Rule returns the step's trigger rule with its default.
func (s Step) Rule() string {
	if s.TriggerRule == "" {
		return AllSuccess
	}
	return s.TriggerRule
}

// TaskKind is the kind of the step's task.
func (s Step) TaskKind() string {
	if s.Shell != "" {
		return KindShell
	}
	return s.Kind
}

// TaskPayload is the JSON payload of the step's task (references unresolved).
func (s Step) TaskPayload() (json.RawMessage, error) {
	if s.Shell != "" {
		return json.Marshal(struct {
			Command string            `json:"command"`
			Env     map[string]string `json:"env,omitempty"`
		}{s.Shell, s.Env})
	}
	if s.Payload == nil {
		return json.RawMessage("{}"), nil
	}
	return json.Marshal(s.Payload)
}

func duration(s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("bad duration %q (write e.g. 30s, 5m, 1h)", s)
	}
	if d < 0 {
		return 0, fmt.Errorf("bad duration %q: negative", s)
	}
	return d, nil
}

// Validate checks everything that needs no database (groups are checked when
// applied) and returns a *ValidationError listing every problem with its place.
func (d Definition) Validate() error {
	var probs []Problem
	add := func(path, format string, a ...any) { probs = append(probs, Problem{path, fmt.Sprintf(format, a...)}) }
	if !nameRE.MatchString(d.Name) {
		add("name", "%q must be 1-128 of letters, digits, _ . - starting with a letter or digit", d.Name)
	}
	if d.FailureStrategy != "" && d.FailureStrategy != StrategyContinue && d.FailureStrategy != StrategyEnd {
		add("failure_strategy", "unknown failure strategy %q (continue or end)", d.FailureStrategy)
	}
	if _, err := duration(d.Timeout); err != nil {
		add("timeout", "%v", err)
	}
	params := map[string]Param{}
	for i, p := range d.Params {
		path := fmt.Sprintf("params[%d] (%s)", i, p.Name)
		switch {
		case !paramRE.MatchString(p.Name):
			add(path, "parameter name %q must be letters, digits and _, not starting with a digit", p.Name)
		case params[p.Name].Name != "":
			add(path, "duplicate parameter name %q", p.Name)
		}
		if !slices.Contains([]string{"", "string", "int", "number", "bool"}, p.Type) {
			add(path+".type", "unknown type %q (string, int, number or bool)", p.Type)
		} else if p.Default != nil {
			if _, err := Coerce(p, *p.Default); err != nil {
				add(path+".default", "%v", err)
			}
		}
		params[p.Name] = p
	}
	if len(d.Steps) == 0 {
		add("steps", "a workflow needs at least one step")
	}
	if len(d.Steps) > MaxSteps {
		add("steps", "%d steps; the limit is %d", len(d.Steps), MaxSteps)
	}
	index := map[string]int{}
	for i, s := range d.Steps {
		path := fmt.Sprintf("steps[%d] (%s)", i, s.Name)
		if !stepRE.MatchString(s.Name) {
			add(path+".name", "step name %q must be 1-128 of letters, digits, _ - starting with a letter or digit", s.Name)
		}
		if j, dup := index[s.Name]; dup {
			add(path+".name", "duplicate step name %q (also steps[%d])", s.Name, j)
			continue
		}
		index[s.Name] = i
	}
	for i, s := range d.Steps {
		path := fmt.Sprintf("steps[%d] (%s)", i, s.Name)
		if s.Workflow != "" {
			switch {
			case !nameRE.MatchString(s.Workflow):
				add(path+".workflow", "%q must be 1-128 of letters, digits, _ . - starting with a letter or digit", s.Workflow)
			case s.Workflow == d.Name:
				add(path+".workflow", "a workflow cannot run itself as a sub-workflow")
			}
			if s.Group != "" || s.Shell != "" || s.Kind != "" || s.Payload != nil || s.Env != nil || s.Map != nil || len(s.Outputs) > 0 {
				add(path, "a sub-workflow step takes no group, shell, kind, payload, env, map or outputs (its outputs are run_id and state)")
			}
		} else if len(s.Params) > 0 {
			add(path+".params", "only a sub-workflow step (workflow:) takes params")
		}
		if s.Map != nil {
			if m := refRE.FindStringSubmatch(s.Map.Over); m == nil || m[0] != strings.TrimSpace(s.Map.Over) {
				add(path+".map.over", "%q: write one reference, ${params.NAME} or ${steps.STEP.outputs.KEY}", s.Map.Over)
			}
			if s.Map.MaxItems < 0 || s.Map.MaxItems > MaxMapItems {
				add(path+".map.max_items", "max_items %d is outside 1..%d (0: %d)", s.Map.MaxItems, MaxMapItems, DefaultMapMaxItems)
			}
			if s.Map.Parallelism < 0 || s.Map.Parallelism > MaxMapItems {
				add(path+".map.parallelism", "parallelism %d is outside 0..%d (0: no bound)", s.Map.Parallelism, MaxMapItems)
			}
			if len(s.Outputs) > 0 {
				add(path+".outputs", "a map step's outputs are results and count; declare none")
			}
		}
		switch {
		case s.Workflow != "":
		case !groupRE.MatchString(s.Group):
			add(path+".group", "group %q must be 1-63 of letters, digits, _ . - starting with a letter or digit", s.Group)
		}
		switch {
		case s.Workflow != "":
		case s.Shell != "" && s.Kind != "":
			add(path, "set shell or kind, not both")
		case s.Shell == "" && s.Kind == "":
			add(path, "set shell (a command) or kind (a Go handler)")
		case s.Shell != "" && s.Payload != nil:
			add(path+".payload", "a shell step takes no payload (use env)")
		case s.Kind != "" && !kindRE.MatchString(s.Kind):
			add(path+".kind", "kind %q must be 1-128 of letters, digits, _ . : / - starting with a letter or digit", s.Kind)
		case s.Kind == KindShell:
			add(path+".kind", `use shell: COMMAND for a shell step`)
		}
		if !slices.Contains(TriggerRules, s.Rule()) {
			add(path+".trigger_rule", "unknown trigger rule %q (one of %s)", s.TriggerRule, strings.Join(TriggerRules, ", "))
		}
		if s.Priority < -1000 || s.Priority > 1000 {
			add(path+".priority", "priority %d is outside -1000..1000", s.Priority)
		}
		if s.MaxRetries < 0 || s.MaxRetries > 100 {
			add(path+".max_retries", "max_retries %d is outside 0..100", s.MaxRetries)
		}
		if _, err := duration(s.Timeout); err != nil {
			add(path+".timeout", "%v", err)
		}
		base, errB := duration(s.RetryBackoffBase)
		if errB != nil {
			add(path+".retry_backoff_base", "%v", errB)
		}
		maxB, errM := duration(s.RetryBackoffMax)
		if errM != nil {
			add(path+".retry_backoff_max", "%v", errM)
		}
		if errB == nil && errM == nil && (s.RetryBackoffBase == "") != (s.RetryBackoffMax == "") {
			add(path, "set both retry_backoff_base and retry_backoff_max, or neither")
		} else if errB == nil && errM == nil && (base > 24*time.Hour || maxB < base || maxB > 7*24*time.Hour) {
			add(path, "retry backoff base %s, max %s: need base <= 24h and base <= max <= 168h", base, maxB)
		}
		for j, o := range s.Outputs {
			if !paramRE.MatchString(o) {
				add(fmt.Sprintf("%s.outputs[%d]", path, j), "output key %q must be letters, digits and _", o)
			}
		}
		seen := map[string]bool{}
		for j, dep := range s.DependsOn {
			dpath := fmt.Sprintf("%s.depends_on[%d]", path, j)
			switch _, ok := index[dep]; {
			case !ok:
				add(dpath, "unknown step %q", dep)
			case dep == s.Name:
				add(dpath, "a step cannot depend on itself")
			case seen[dep]:
				add(dpath, "duplicate dependency %q", dep)
			}
			seen[dep] = true
		}
		payload, err := s.TaskPayload()
		switch {
		case err != nil:
			add(path+".payload", "not representable as JSON: %v", err)
		case len(payload) > MaxPayloadBytes:
			add(path+".payload", "%d bytes; the limit is %d (1 MiB)", len(payload), MaxPayloadBytes)
		}
	}
	if cyc := d.cycle(index); cyc != nil {
		add("steps", "cycle: %s", strings.Join(cyc, " -> "))
	} else if len(probs) == 0 {
		// References need the graph to be sound (ancestors).
		anc := d.ancestors(index)
		for i, s := range d.Steps {
			path := fmt.Sprintf("steps[%d] (%s)", i, s.Name)
			payload, _ := s.TaskPayload()
			texts := []struct{ where, text string }{{".payload", string(payload)}}
			if s.Map != nil {
				texts = append(texts, struct{ where, text string }{".map.over", s.Map.Over})
			}
			for _, k := range slices.Sorted(maps.Keys(s.Params)) {
				texts = append(texts, struct{ where, text string }{".params." + k, s.Params[k]})
			}
			for _, tx := range texts {
				for _, m := range refRE.FindAllStringSubmatch(tx.text, -1) {
					probs = append(probs, d.checkRef(path+tx.where, m[1], i, s, params, index, anc)...)
				}
			}
		}
	}
	if len(probs) > 0 {
		return &ValidationError{Problems: probs}
	}
	return nil
}

// checkRef checks one reference ${ref} of step i (at path).
func (d Definition) checkRef(path, ref string, i int, s Step, params map[string]Param, index map[string]int, anc []map[int]bool) []Problem {
	var probs []Problem
	add := func(format string, a ...any) { probs = append(probs, Problem{path, fmt.Sprintf(format, a...)}) }
	switch {
	case ref == "map.item" || ref == "map.index":
		if s.Map == nil {
			add("reference ${%s}: only a map step's payload has a map item", ref)
		} else if strings.HasSuffix(path, ".map.over") {
			add("reference ${%s}: map.over names the array, not an item", ref)
		}
	case strings.HasPrefix(ref, "params."):
		name := strings.TrimPrefix(ref, "params.")
		if _, ok := params[name]; !ok {
			add("reference ${%s}: unknown parameter %q", ref, name)
		}
	case strings.HasPrefix(ref, "steps."):
		up, key, ok := strings.Cut(strings.TrimPrefix(ref, "steps."), ".outputs.")
		j, known := index[up]
		switch {
		case !ok:
			add("reference ${%s}: write ${steps.STEP.outputs.KEY}", ref)
		case !known:
			add("reference ${%s}: unknown step %q", ref, up)
		case !anc[i][j]:
			add("reference ${%s}: step %q is not upstream of %q", ref, up, s.Name)
		case !slices.Contains(d.Steps[j].OutputKeys(), key):
			add("reference ${%s}: step %q declares no output %q (its outputs: %v)", ref, up, key, d.Steps[j].OutputKeys())
		}
	default:
		add("reference ${%s}: write ${params.NAME} or ${steps.STEP.outputs.KEY}", ref)
	}
	return probs
}

// cycle returns one dependency cycle as a path of step names (first == last),
// or nil. Unknown dependencies are ignored (reported elsewhere).
func (d Definition) cycle(index map[string]int) []string {
	const (
		white = iota
		grey
		black
	)
	color := make([]int, len(d.Steps))
	var stack []int
	var found []string
	var visit func(i int) bool
	visit = func(i int) bool {
		color[i] = grey
		stack = append(stack, i)
		for _, dep := range d.Steps[i].DependsOn {
			j, ok := index[dep]
			if !ok || j == i {
				continue // reported as unknown, or as a self-dependency
			}
			if color[j] == grey {
				// The cycle is stack[k..] + j, in dependency order; report it in
				// run order (upstream first).
				k := slices.Index(stack, j)
				path := []string{}
				for _, s := range stack[k:] {
					path = append(path, d.Steps[s].Name)
				}
				path = append(path, d.Steps[j].Name)
				slices.Reverse(path)
				found = path
				return true
			}
			if color[j] == white && visit(j) {
				return true
			}
		}
		stack = stack[:len(stack)-1]
		color[i] = black
		return false
	}
	for i := range d.Steps {
		if color[i] == white && visit(i) {
			return found
		}
	}
	return nil
}

// ancestors[i][j]: step j is upstream (transitively) of step i. The graph must
// be acyclic.
func (d Definition) ancestors(index map[string]int) []map[int]bool {
	memo := make([]map[int]bool, len(d.Steps))
	var get func(i int) map[int]bool
	get = func(i int) map[int]bool {
		if memo[i] != nil {
			return memo[i]
		}
		m := map[int]bool{}
		for _, dep := range d.Steps[i].DependsOn {
			if j, ok := index[dep]; ok {
				m[j] = true
				for k := range get(j) {
					m[k] = true
				}
			}
		}
		memo[i] = m
		return m
	}
	for i := range d.Steps {
		get(i)
	}
	return memo
}

// Canonical is the definition's canonical JSON (what a version stores) and
// its content hash.
func (d Definition) Canonical() (json.RawMessage, string, error) {
	b, err := json.Marshal(d)
	if err != nil {
		return nil, "", fmt.Errorf("encode workflow: %w", err)
	}
	// Round trip through a generic value: map keys sorted, numbers as written.
	var v any
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		return nil, "", fmt.Errorf("encode workflow: %w", err)
	}
	b, err = json.Marshal(v)
	if err != nil {
		return nil, "", fmt.Errorf("encode workflow: %w", err)
	}
	sum := sha256.Sum256(b)
	return b, hex.EncodeToString(sum[:]), nil
}

// Groups lists the distinct worker groups of the steps, sorted.
func (d Definition) Groups() []string {
	var gs []string
	for _, s := range d.Steps {
		if s.Workflow == "" {
			gs = append(gs, s.Group)
		}
	}
	slices.Sort(gs)
	return slices.Compact(gs)
}

// Coerce converts a parameter value (a string from the CLI, or a Go value) to
// the parameter's type.
func Coerce(p Param, v any) (any, error) {
	s, isString := v.(string)
	switch p.Type {
	case "", "string":
		if !isString {
			return fmt.Sprint(v), nil
		}
		return s, nil
	case "int":
		switch x := v.(type) {
		case int:
			return int64(x), nil
		case int64:
			return x, nil
		case float64:
			if x == float64(int64(x)) {
				return int64(x), nil
			}
		case string:
			if n, err := strconv.ParseInt(strings.TrimSpace(x), 10, 64); err == nil {
				return n, nil
			}
		}
		return nil, fmt.Errorf("parameter %s: %v is not an int", p.Name, v)
	case "number":
		switch x := v.(type) {
		case int:
			return float64(x), nil
		case int64:
			return float64(x), nil
		case float64:
			return x, nil
		case string:
			if n, err := strconv.ParseFloat(strings.TrimSpace(x), 64); err == nil {
				return n, nil
			}
		}
		return nil, fmt.Errorf("parameter %s: %v is not a number", p.Name, v)
	case "bool":
		switch x := v.(type) {
		case bool:
			return x, nil
		case string:
			if b, err := strconv.ParseBool(strings.TrimSpace(x)); err == nil {
				return b, nil
			}
		}
		return nil, fmt.Errorf("parameter %s: %v is not a bool", p.Name, v)
	}
	return nil, fmt.Errorf("parameter %s: unknown type %q", p.Name, p.Type)
}

// RunParams checks a run's parameters against the definition (no unknown
// name, every parameter without default set, values of the right type) and
// returns them with defaults filled in, as a JSON object.
func (d Definition) RunParams(given map[string]any) (json.RawMessage, error) {
	out := map[string]any{}
	known := map[string]bool{}
	var probs []Problem
	for _, p := range d.Params {
		known[p.Name] = true
		v, ok := given[p.Name]
		if !ok {
			if p.Default == nil {
				probs = append(probs, Problem{"params." + p.Name, "required parameter not set"})
				continue
			}
			v = *p.Default
		}
		c, err := Coerce(p, v)
		if err != nil {
			probs = append(probs, Problem{"params." + p.Name, err.Error()})
			continue
		}
		out[p.Name] = c
	}
	for name := range given {
		if !known[name] {
			probs = append(probs, Problem{"params." + name, fmt.Sprintf("unknown parameter %q", name)})
		}
	}
	if len(probs) > 0 {
		slices.SortFunc(probs, func(a, b Problem) int { return strings.Compare(a.Path, b.Path) })
		return nil, &ValidationError{Problems: probs}
	}
	return json.Marshal(out)
}
