// Package deploy holds the deployment files (images, compose, Kubernetes,
// Prometheus rules). Its image test is built only with -tags images:
// go test -tags images ./deploy/
package deploy
