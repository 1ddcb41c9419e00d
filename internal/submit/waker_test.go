package submit

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/baton-scheduler/baton/batontest"
	"github.com/baton-scheduler/baton/db"
	"github.com/baton-scheduler/baton/internal/notify"
)

// TestWakerCoversEveryCall: many concurrent Wake calls on two groups. Every call
// returns only after a NOTIFY of its group that started after the call did (so
// it covers the caller's commit), and concurrent calls share NOTIFYs.
func TestWakerCoversEveryCall(t *testing.T) {
	var (
		clock atomic.Int64 // orders call entries and sends
		mu    sync.Mutex
		ended = map[string][]int64{} // group -> start ticks of the sends that ended
		sends atomic.Int64
	)
	w := NewWaker(nil)
	w.send = func(_ context.Context, groups []string) {
		start := clock.Add(1)
		sends.Add(1)
		time.Sleep(200 * time.Microsecond) // a NOTIFY's round trip
		mu.Lock()
		for _, g := range groups {
			ended[g] = append(ended[g], start)
		}
		mu.Unlock()
	}
	const callers, calls = 32, 50
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	for i := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			g := fmt.Sprintf("g%d", i%2)
			for range calls {
				entered := clock.Add(1)
				w.Wake(context.Background(), []string{g})
				mu.Lock()
				covered := false
				for _, s := range ended[g] {
					covered = covered || s > entered
				}
				mu.Unlock()
				if !covered {
					errs <- fmt.Errorf("a Wake of %s returned with no NOTIFY started after it", g)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n := sends.Load(); n >= callers*calls {
		t.Fatalf("%d NOTIFYs for %d calls: none shared", n, callers*calls)
	}
	t.Logf("%d NOTIFYs for %d calls", sends.Load(), callers*calls)
}

// TestWakerCanceled: a caller waiting behind a NOTIFY in flight returns when its
// context ends.
func TestWakerCanceled(t *testing.T) {
	release := make(chan struct{})
	w := NewWaker(nil)
	w.send = func(context.Context, []string) { <-release }
	go w.Wake(context.Background(), []string{"g"})
	batontest.WaitFor(t, 10*time.Second, func() (bool, string) {
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.groups["g"] != nil && w.groups["g"].busy, "first NOTIFY in flight"
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { w.Wake(ctx, []string{"g"}); close(done) }()
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Wake did not return after its context was canceled")
	}
	close(release)
}

// TestWakerNotifies: on a real Postgres the shared NOTIFYs reach a listener.
func TestWakerNotifies(t *testing.T) {
	pool, _ := srv.NewPool(t)
	got := make(chan string, 1000)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	l := &notify.Listener{Pool: pool, Channels: []string{notify.ChannelClaim}, Logger: zaptest.NewLogger(t)}
	listening := make(chan struct{})
	var once sync.Once
	l.OnNotify = func(_, payload string) {
		if payload == "*" {
			once.Do(func() { close(listening) })
			return
		}
		got <- payload
	}
	go l.Run(ctx)
	<-listening
	w := NewWaker(db.New(pool))
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() { defer wg.Done(); w.Wake(context.Background(), []string{"bench"}) }()
	}
	wg.Wait()
	select {
	case p := <-got:
		if p != "g:bench" {
			t.Fatalf("payload %q, want g:bench", p)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no NOTIFY reached the listener")
	}
}
