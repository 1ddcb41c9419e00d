// Package deploy holds the deployment files (images, compose, Kubernetes,
// Prometheus rules, Grafana, systemd). Its image test is built only with -tags
// images (make test's e2e tier runs it): go test -tags images ./deploy/
package deploy
