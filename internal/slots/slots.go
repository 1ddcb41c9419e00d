// Package slots decides which healthy worker session gets the next task:
// the one with the most free slots left (least loaded first).
package slots

import "github.com/baton-scheduler/baton/db"

// Picker hands out the free slots of a set of sessions.
type Picker struct {
	ids  []int64
	free []int
}

// NewPicker takes healthy sessions with their free slots, leaving out exclude.
func NewPicker(healthy []db.WorkerSessionListHealthyRow, exclude int64) *Picker {
	p := &Picker{}
	for _, h := range healthy {
		if h.ID == exclude || h.FreeSlots <= 0 {
			continue
		}
		p.ids = append(p.ids, h.ID)
		p.free = append(p.free, int(h.FreeSlots))
	}
	return p
}

// Free is the number of slots left to hand out.
func (p *Picker) Free() int {
	n := 0
	for _, f := range p.free {
		n += f
	}
	return n
}

// Next returns the session for the next task, or 0 when no slot is left.
func (p *Picker) Next() int64 {
	best := -1
	for i, f := range p.free {
		if f > 0 && (best < 0 || f > p.free[best]) {
			best = i
		}
	}
	if best < 0 {
		return 0
	}
	p.free[best]--
	return p.ids[best]
}
