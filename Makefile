# livegate — build, test and demo. Every target that needs a tool installs it first (idempotent).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := build

GOBIN_DIR := $(shell go env GOPATH 2>/dev/null || echo $(HOME)/go)/bin
export PATH := /usr/local/go/bin:$(GOBIN_DIR):$(PATH)
export GOFLAGS := -buildvcs=false

MODULES := pkg proto agent edgeproxy e2e samples/streamapp
# nftables: the nft the tests and the demo read the edge's DNAT map with (the edge itself needs no
# nft, it programs the map over netlink). chromium, ffmpeg and the font: the browser end-to-end
# test and the sample app's test pattern.
APT_PACKAGES := haproxy iptables nftables conntrack iproute2 ca-certificates chromium ffmpeg fonts-dejavu-core curl jq
NATS_SERVER_VERSION := v2.15.2
NATS_CLI_VERSION := v0.5.1
BUF_VERSION := v1.50.0
PROTOC_GEN_GO_VERSION := v1.36.12
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
# GOFLAGS turns the toolchain's VCS stamping off, so the revision is linked in (empty outside git: "unknown").
REVISION ?= $(shell git rev-parse --short=12 HEAD 2>/dev/null)
LDFLAGS := -X github.com/livegate/livegate/pkg/buildinfo.Version=$(VERSION) -X github.com/livegate/livegate/pkg/buildinfo.Revision=$(REVISION)
TEST_FLAGS ?= -count=1 -timeout 10m

.PHONY: build deps test vet unit proto proto-check demo fmt tools clean nats-cli

build: ## Build livegate-agent, livegate-edgeproxy, the sample WebRTC app (streamapp) and the e2e stand-in app (livegate-demoapp) into bin/
	@mkdir -p bin
	go build -ldflags '$(LDFLAGS)' -o bin/livegate-agent ./agent/cmd/livegate-agent
	go build -ldflags '$(LDFLAGS)' -o bin/livegate-edgeproxy ./edgeproxy/cmd/livegate-edgeproxy
	go build -o bin/streamapp ./samples/streamapp
	go build -o bin/livegate-demoapp ./e2e/demoapp

bin/testsrc.ivf: ## The sample app's test pattern, made with ffmpeg (make deps installs it)
	@mkdir -p bin
	go run ./samples/streamapp gen-video $@

deps: ## Install what the tests need: Debian packages and a pinned nats-server
	@command -v go >/dev/null || { echo "Go 1.26+ is required (https://go.dev/dl); not found on PATH" >&2; exit 1; }
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "deps: installing$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	else echo "deps: Debian packages present"; fi
	@if [ "$$($(GOBIN_DIR)/nats-server --version 2>/dev/null)" != "nats-server: $(NATS_SERVER_VERSION)" ]; then \
	  echo "deps: go install nats-server@$(NATS_SERVER_VERSION)"; \
	  GOBIN=$(GOBIN_DIR) GOFLAGS= go install github.com/nats-io/nats-server/v2@$(NATS_SERVER_VERSION); \
	else echo "deps: nats-server $(NATS_SERVER_VERSION) present"; fi

nats-cli: ## Install the pinned nats CLI (optional: livegate-edgeproxy status covers what the docs need)
	@if [ "$$($(GOBIN_DIR)/nats --version 2>/dev/null)" != "$(NATS_CLI_VERSION)" ] && [ "$$($(GOBIN_DIR)/nats --version 2>/dev/null)" != "$(NATS_CLI_VERSION:v%=%)" ]; then \
	  echo "nats-cli: go install natscli@$(NATS_CLI_VERSION)"; GOBIN=$(GOBIN_DIR) GOFLAGS= go install github.com/nats-io/natscli/nats@$(NATS_CLI_VERSION); \
	else echo "nats-cli: nats $(NATS_CLI_VERSION) present"; fi

tools: ## Install the pinned protobuf generators
	@if [ "$$($(GOBIN_DIR)/buf --version 2>/dev/null)" != "$(BUF_VERSION:v%=%)" ]; then \
	  echo "tools: go install buf@$(BUF_VERSION)"; GOBIN=$(GOBIN_DIR) GOFLAGS= go install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION); fi
	@if [ "$$($(GOBIN_DIR)/protoc-gen-go --version 2>/dev/null)" != "protoc-gen-go $(PROTOC_GEN_GO_VERSION)" ]; then \
	  echo "tools: go install protoc-gen-go@$(PROTOC_GEN_GO_VERSION)"; GOBIN=$(GOBIN_DIR) GOFLAGS= go install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION); fi

proto: tools ## Regenerate the Go code for proto/livegate/v1
	cd proto && buf lint && buf generate

proto-check: proto ## Fail when the committed generated code is stale
	@if [ -n "$$(git status --porcelain -- proto)" ]; then \
	  echo "proto-check: generated code differs from what is committed; run 'make proto' and commit:" >&2; \
	  git status --porcelain -- proto >&2; git --no-pager diff --stat -- proto >&2; exit 1; \
	else echo "proto-check: generated code is current"; fi

vet: ## gofmt and go vet over every module
	@unformatted=$$(gofmt -l $(MODULES) | grep -v '\.pb\.go$$' || true); \
	if [ -n "$$unformatted" ]; then echo "gofmt would change:" $$unformatted >&2; exit 1; fi
	@for m in $(MODULES); do echo "vet: $$m"; (cd $$m && go vet ./...); done

unit: ## The tests of every module (root-only tests skip when not root)
	@for m in $(MODULES); do echo "test: $$m"; (cd $$m && go test $(TEST_FLAGS) ./...); done

test: deps proto-check vet unit deploy-check images-test fuzz-short ## What CI runs: deps, stale-code check, vet, every test, deploy/ checks

demo: deps build ## The whole path on one machine (edge, two apps with agents, a client); DEMO_SECONDS=N stops it after N s
	@if [ "$$(id -u)" != 0 ]; then echo "make demo: run as root (it creates network namespaces, nftables and iptables rules)" >&2; exit 1; fi
	go build -o bin/livegate-demo ./e2e/cmd/demo
	@# exec: the demo itself, not a wrapper, receives make's SIGTERM and cleans up.
	exec bin/livegate-demo -bin bin

fmt:
	gofmt -w $(MODULES)

clean:
	rm -rf bin

include mk/bench.mk mk/deploy.mk mk/fuzz.mk mk/images.mk
