package baton_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/baton-scheduler/baton"
)

// The handler an application mounts under a prefix: the API answers there, and
// the status page's links and redirects carry the prefix.
func TestHTTPHandlerMountedUnderAPrefix(t *testing.T) {
	t.Parallel()
	pool, _ := srv.NewPool(t)
	h, err := baton.NewHTTPHandler(pool, &baton.HTTPConfig{BasePath: "/baton"})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/baton/", http.StripPrefix("/baton", h))
	ts := httptest.NewServer(mux)
	defer ts.Close()
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	get := func(path string) (*http.Response, string) {
		t.Helper()
		resp, err := client.Get(ts.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}
	if resp, body := get("/baton/livez"); resp.StatusCode != 200 {
		t.Fatalf("livez: %d %s", resp.StatusCode, body)
	}
	if resp, body := get("/baton/api/v1/tasks"); resp.StatusCode != 401 || !strings.Contains(body, "missing bearer token") {
		t.Fatalf("API without a token: %d %s", resp.StatusCode, body)
	}
	if resp, _ := get("/baton/ui/"); resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/baton/ui/login" {
		t.Fatalf("page without sign-in: %d to %q, want 303 to /baton/ui/login", resp.StatusCode, resp.Header.Get("Location"))
	}
	if resp, body := get("/baton/ui/login"); resp.StatusCode != 200 || !strings.Contains(body, `href="/baton/ui/static/style.css"`) {
		t.Fatalf("login page: %d, links without the prefix:\n%s", resp.StatusCode, body)
	}
	if resp, _ := get("/baton/ui/static/style.css"); resp.StatusCode != 200 {
		t.Fatalf("style sheet: %d", resp.StatusCode)
	}
}
