package batontest

import (
	"context"
	"fmt"
	"sync"
	"testing"
)

// Service is the lifecycle every baton service has (internal/service.StartStop).
type Service interface {
	Start(ctx context.Context) error
	Stop()
	Done() <-chan struct{}
}

// StartStopStress starts and stops svc many times and checks the lifecycle
// promises: Stop before Start and a second Stop are no-ops; every Start returns
// nil and leaves a running loop; Stop returns only after that loop has returned,
// leaving the service stopped and restartable; Start and Stop called from several
// goroutines at once neither deadlock nor race (run with -race) and end stopped.
// whileRunning, if not nil, is called in every sequential cycle between Start
// and Stop (to hand the service work that Stop must finish). The caller then
// checks that the service still works.
func StartStopStress(t testing.TB, svc Service, whileRunning func(i int)) {
	t.Helper()
	ctx := context.Background()
	svc.Stop()
	svc.Stop()
	if svc.Done() != nil {
		t.Fatal("batontest: Stop before Start left a running loop")
	}
	for i := range 50 {
		if err := svc.Start(ctx); err != nil {
			t.Fatalf("batontest: start %d: %v", i, err)
		}
		done := svc.Done()
		if done == nil {
			t.Fatalf("batontest: start %d: no running loop", i)
		}
		if whileRunning != nil {
			whileRunning(i)
		}
		svc.Stop()
		select {
		case <-done:
		default:
			t.Fatalf("batontest: stop %d returned before the loop did", i)
		}
		if svc.Done() != nil {
			t.Fatalf("batontest: stop %d left the service running", i)
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 25 {
				if err := svc.Start(ctx); err != nil {
					errs <- fmt.Errorf("goroutine %d, start %d: %w", g, i, err)
				}
				svc.Stop()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("batontest: concurrent %v", err)
	}
	svc.Stop()
	if svc.Done() != nil {
		t.Fatal("batontest: concurrent starts and stops left the service running")
	}
}
