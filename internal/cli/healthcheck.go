package cli

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// healthcheckCmd is `baton healthcheck`: for images without curl. Exit 0 when
// the master's /readyz answers 200 within --timeout.
func (a *app) healthcheckCmd() *cobra.Command {
	var url, path string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "healthcheck",
		Short: "exit 0 when the master's /readyz answers 200",
		Long: `Ask a master's HTTP server (baton-master --http-addr) for /readyz (database
reachable, schema current) or another path; exit 0 on 200, 1 otherwise. For
container images without curl (HEALTHCHECK, Kubernetes exec probes).`,
		Example: `  baton healthcheck
  baton healthcheck --url http://master:8080 --path /livez --timeout 2s`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(url, "/")+path, nil)
			if err != nil {
				return fmt.Errorf("healthcheck: %w", err)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return fmt.Errorf("healthcheck: %w", err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("healthcheck %s: %s: %s", req.URL, resp.Status, strings.TrimSpace(string(body)))
			}
			fmt.Fprintf(a.stdout, "ok %s\n", strings.TrimSpace(string(body)))
			return nil
		},
	}
	cmd.Flags().StringVar(&url, "url", envDefault(a.env, "BATON_HEALTHCHECK_URL", "http://127.0.0.1:8080"), "the master's HTTP address (env BATON_HEALTHCHECK_URL)")
	cmd.Flags().StringVar(&path, "path", "/readyz", "endpoint: /readyz (database reachable, schema current) or /livez (process only)")
	cmd.Flags().DurationVar(&timeout, "timeout", 5*time.Second, "give up after this long")
	return cmd
}
