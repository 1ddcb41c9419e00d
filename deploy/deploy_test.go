//go:build images

// The image test is behind the build tag "images" (go test -tags images ./deploy/):
// it recompiles everything statically (CGO_ENABLED=0), so only the e2e tier of
// make test (scripts/test.sh) builds and runs it, once.
package deploy

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/baton-scheduler/baton/batontest"
)

var srv *batontest.Server

func TestMain(m *testing.M) {
	os.Exit(batontest.Main(m, func(s *batontest.Server) { srv = s }))
}

// Both images build FROM scratch from static binaries (nothing pulled), the
// master image serves /readyz on a migrated database, and `baton healthcheck`
// runs in each image against it. The static build recompiles everything (minutes
// on a loaded 2-core machine), so it is built only with -tags images.
func TestImages(t *testing.T) {
	docker, err := exec.LookPath("docker")
	if err == nil {
		err = exec.Command(docker, "info").Run()
	}
	if err != nil {
		if batontest.InCI() {
			t.Fatalf("docker: %v", err)
		}
		t.Skipf("docker: %v", err)
	}
	dsn := srv.NewDatabase(t)
	dir := t.TempDir()
	build := exec.Command("go", "build", "-trimpath", "-o", filepath.Join(dir, "bin")+"/", "./cmd/...")
	build.Dir = ".."
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("static build: %v\n%s", err, out)
	}
	run := func(args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, docker, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("docker %v: %v\n%s", args, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	tag := fmt.Sprintf("baton-test-%d", time.Now().UnixNano())
	for _, target := range []string{"master", "worker"} {
		run("build", "-q", "-f", "docker/Dockerfile", "--target", target, "-t", tag+"-"+target, dir)
		t.Cleanup(func() { _ = exec.Command(docker, "rmi", "-f", tag+"-"+target).Run() })
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	id := run("run", "-d", "--network", "host", "-e", "BATON_DATABASE_URL="+dsn, "-e", "BATON_HTTP_ADDR="+addr, tag+"-master")
	t.Cleanup(func() { _ = exec.Command(docker, "rm", "-f", id).Run() })
	var out []byte
	for range 100 {
		out, err = exec.Command(docker, "exec", id, "/usr/local/bin/baton", "healthcheck", "--url", "http://"+addr).CombinedOutput()
		if err == nil {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		logs, _ := exec.Command(docker, "logs", id).CombinedOutput()
		t.Fatalf("healthcheck in the master image: %v %s\nlogs: %s", err, out, logs)
	}
	if got := run("run", "--rm", "--network", "host", "--entrypoint", "/usr/local/bin/baton", tag+"-worker", "healthcheck", "--url", "http://"+addr); !strings.Contains(got, `"status":"ok"`) {
		t.Fatalf("healthcheck in the worker image: %s", got)
	}
	// The worker image serves /livez and /metrics (BATON_METRICS_ADDR); its
	// own healthcheck command reads /livez.
	ln, err = net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	maddr := ln.Addr().String()
	ln.Close()
	wid := run("run", "-d", "--network", "host", "-e", "BATON_DATABASE_URL="+dsn, "-e", "BATON_METRICS_ADDR="+maddr, tag+"-worker")
	t.Cleanup(func() { _ = exec.Command(docker, "rm", "-f", wid).Run() })
	for range 100 {
		out, err = exec.Command(docker, "exec", wid, "/usr/local/bin/baton", "healthcheck", "--url", "http://"+maddr, "--path", "/metrics").CombinedOutput()
		if err == nil {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil || !strings.Contains(string(out), "baton_worker_attempts_started_total") {
		logs, _ := exec.Command(docker, "logs", wid).CombinedOutput()
		t.Fatalf("worker image /metrics: %v %s\nlogs: %s", err, out, logs)
	}
	if got := run("exec", wid, "/usr/local/bin/baton", "healthcheck", "--url", "http://"+maddr, "--path", "/livez"); !strings.Contains(got, `"status":"ok"`) {
		t.Fatalf("worker image /livez: %s", got)
	}
}
