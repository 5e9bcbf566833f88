# deploy/ checks, included from the root Makefile. deploy/validate is a Go module of its own, run
# with GOWORK=off: its dependencies (kubeconform, Prometheus' rule parser) stay out of the
# workspace's build list, so they never change the versions agent and edgeproxy build with.
# Needs what `make deps` installs (nats-server, haproxy); everything else comes from the Go
# module proxy, pinned in deploy/validate/go.sum (the Kubernetes OpenAPI document is the
# k8s.io/kubernetes module named in deploy/validate/kubeschema.go).

DEPLOY_VALIDATE := deploy/validate

.PHONY: deploy-check deploy-vet

deploy-vet: ## gofmt and go vet of deploy/validate
	@unformatted=$$(gofmt -l $(DEPLOY_VALIDATE)); \
	if [ -n "$$unformatted" ]; then echo "gofmt would change:" $$unformatted >&2; exit 1; fi
	cd $(DEPLOY_VALIDATE) && GOWORK=off go vet ./...

deploy-check: deps deploy-vet ## Validate deploy/ offline: Kubernetes manifests (kubeconform, strict), alert rules, dashboard, metric names, NATS configs, systemd units, example configs with the real binaries
	cd $(DEPLOY_VALIDATE) && GOWORK=off go test $(or $(TEST_FLAGS),-count=1) ./...
