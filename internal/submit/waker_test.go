package submit

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/baton-scheduler/baton/batontest"
	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/notify"
)

// fakeSends records the Waker's NOTIFY statements; each blocks until released.
type fakeSends struct {
	mu      sync.Mutex
	sent    [][]string
	release chan struct{}
}

func (f *fakeSends) send(_ context.Context, groups []string) {
	f.mu.Lock()
	f.sent = append(f.sent, groups)
	f.mu.Unlock()
	<-f.release
}

func (f *fakeSends) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.sent)
}

// TestWakerCoalesces: a Wake while a NOTIFY is in flight is covered by a later
// NOTIFY, one statement for every group recorded meanwhile; Wake never waits.
func TestWakerCoalesces(t *testing.T) {
	f := &fakeSends{release: make(chan struct{})}
	w := NewWaker(nil)
	w.send = f.send
	w.Wake([]string{"a"}) // returns at once although the NOTIFY blocks
	batontest.WaitFor(t, 10*time.Second, func() (bool, string) { return f.count() == 1, "first NOTIFY in flight" })
	for range 50 {
		w.Wake([]string{"b"})
		w.Wake([]string{"a", "c"})
	}
	f.release <- struct{}{} // the first ends; the second takes what was recorded
	batontest.WaitFor(t, 10*time.Second, func() (bool, string) { return f.count() == 2, "second NOTIFY in flight" })
	close(f.release)
	batontest.WaitFor(t, 10*time.Second, func() (bool, string) { return w.idle(), "sender ended" })
	f.mu.Lock()
	sent := slices.Clone(f.sent)
	f.mu.Unlock()
	if want := [][]string{{"a"}, {"a", "b", "c"}}; !slices.EqualFunc(sent, want, slices.Equal) {
		t.Fatalf("NOTIFYs %v, want %v", sent, want)
	}
	// Idle again: the next Wake sends at once.
	w.Wake([]string{"d"})
	batontest.WaitFor(t, 10*time.Second, func() (bool, string) { return f.count() == 3, "NOTIFY of d" })
}

// TestWakerNotifies: on a real Postgres the NOTIFYs reach a listener.
func TestWakerNotifies(t *testing.T) {
	pool, _ := srv.NewPool(t)
	got := make(chan string, 1000)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	listening := make(chan struct{})
	var once sync.Once
	l := &notify.Listener{Pool: pool, Channels: []string{notify.ChannelClaim}, Logger: zaptest.NewLogger(t),
		OnNotify: func(_, payload string) {
			if payload == "*" {
				once.Do(func() { close(listening) })
				return
			}
			got <- payload
		}}
	go l.Run(ctx)
	<-listening
	w := NewWaker(db.New(pool))
	for range 20 {
		w.Wake([]string{"bench"})
	}
	select {
	case p := <-got:
		if p != "g:bench" {
			t.Fatalf("payload %q, want g:bench", p)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no NOTIFY reached the listener")
	}
	batontest.WaitFor(t, 10*time.Second, func() (bool, string) { return w.idle(), "sender ended" })
}
