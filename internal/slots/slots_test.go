package slots

import (
	"testing"

	"github.com/baton-scheduler/baton/db"
)

func TestPickerLeastLoadedFirst(t *testing.T) {
	t.Parallel()
	p := NewPicker([]db.WorkerSessionListHealthyRow{
		{ID: 1, FreeSlots: 1}, {ID: 2, FreeSlots: 3}, {ID: 3, FreeSlots: 0}, {ID: 9, FreeSlots: 5},
	}, 9)
	if p.Free() != 4 {
		t.Fatalf("Free = %d, want 4", p.Free())
	}
	var got []int64
	for range 6 {
		got = append(got, p.Next())
	}
	want := []int64{2, 2, 1, 2, 0, 0}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("picks = %v, want %v", got, want)
		}
	}
}
