package httpapi

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/baton-scheduler/baton/internal/apimodel"
	"github.com/baton-scheduler/baton/internal/taskops"
)

// Bulk actions of the status page: the task list's filter (state, group, kind)
// is canceled or retried as a whole, as POST /api/v1/tasks/cancel|retry with
// that filter does, after a confirmation page that shows how many tasks it
// matches now (a dry run). The signed-in token needs scope operate; the change
// is audited under its name; cross-site posts are refused.

type bulkPage struct {
	Action         string // cancel or retry
	Filter         BulkFilter
	Matched        int
	Max            int
	Done           *apimodel.BulkResult // after the post
	Error          string
	Back, Eligible string
}

func (s *Server) uiBulkRoutes() {
	s.mux.HandleFunc("GET /ui/tasks/bulk", s.page("bulk.html", "bulk action", 0, s.uiBulkConfirm))
	s.mux.HandleFunc("POST /ui/tasks/bulk", s.uiBulk)
}

// bulkForm reads the action and filter of a confirmation link or form.
func bulkForm(v url.Values) (string, BulkFilter, string, error) {
	action := v.Get("action")
	f := BulkFilter{State: v.Get("state"), Group: v.Get("group"), Kind: v.Get("kind")}
	back := url.Values{"state": {f.State}, "group": {f.Group}, "kind": {f.Kind}}.Encode()
	if action != "cancel" && action != "retry" {
		return "", f, back, errorf(http.StatusBadRequest, "unknown bulk action %q: cancel or retry", action)
	}
	if f.State == "" && f.Group == "" && f.Kind == "" {
		return "", f, back, errorf(http.StatusBadRequest, "a bulk %s needs a filter (state, group or kind): it never applies to every task", action)
	}
	return action, f, back, nil
}

func eligibleText(action string) string {
	if action == "retry" {
		return fmt.Sprint(retryable)
	}
	return fmt.Sprint(cancelable)
}

// uiBulkConfirm is the confirmation page: what the filter matches now.
func (s *Server) uiBulkConfirm(r *http.Request) (any, error) {
	action, f, back, err := bulkForm(r.URL.Query())
	p := bulkPage{Action: action, Filter: f, Max: MaxBulk, Back: back, Eligible: eligibleText(action)}
	if err != nil {
		return nil, err
	}
	res, err := s.bulkApply(r.Context(), action, BulkRequest{Filter: &f, DryRun: true}, taskops.Actor{}, "the status page")
	var he *httpError
	if errors.As(err, &he) {
		p.Error = he.msg
		return p, nil
	}
	if err != nil {
		return nil, err
	}
	p.Matched = res.Matched
	return p, nil
}

// uiBulk runs the confirmed action and shows what it changed.
func (s *Server) uiBulk(w http.ResponseWriter, r *http.Request) {
	var p bulkPage
	err := r.ParseForm()
	if err == nil && r.Header.Get("Sec-Fetch-Site") == "cross-site" {
		err = errorf(http.StatusForbidden, "a bulk action must come from the status page itself")
	}
	var action string
	var f BulkFilter
	if err == nil {
		action, f, p.Back, err = bulkForm(r.PostForm)
		p.Action, p.Filter, p.Max, p.Eligible = action, f, MaxBulk, eligibleText(action)
	}
	if err == nil && r.PostForm.Get("confirm") != action {
		err = errorf(http.StatusBadRequest, "the %s was not confirmed: use the form of the confirmation page", action)
	}
	var who taskops.Actor
	if err == nil {
		if who, err = s.cookieAuth(r, ScopeOperate); errors.Is(err, errNotSignedIn) {
			http.Redirect(w, r, s.cfg.BasePath+"/ui/login", http.StatusSeeOther)
			return
		}
	}
	var res apimodel.BulkResult
	if err == nil {
		res, err = s.bulkApply(r.Context(), action, BulkRequest{Filter: &f}, who, "the status page")
	}
	var he *httpError
	switch {
	case err == nil:
		p.Done, p.Matched = &res, res.Matched
		s.render(w, r, "bulk.html", "bulk action", 0, p)
	case errors.As(err, &he):
		p.Error = he.msg
		if he.status == http.StatusForbidden && strings.Contains(he.msg, "scope") {
			p.Error += " (sign in with an operate token: baton token create --scope operate)"
		}
		w.WriteHeader(he.status)
		s.render(w, r, "bulk.html", "bulk action", 0, p)
	default:
		s.log.Warn("status page: bulk " + action + ": " + err.Error())
		http.Error(w, "internal error (logged by the server)", http.StatusInternalServerError)
	}
}
