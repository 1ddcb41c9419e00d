package report

// Key names one attempt of a task (the fencing epoch a result belongs to).
type Key struct {
	TaskID  int64
	Attempt int32
}

// Key is the attempt r reports.
func (r Result) Key() Key { return Key{TaskID: r.TaskID, Attempt: r.Attempt} }
