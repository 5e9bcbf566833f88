# Container images (included from the root Makefile), built without a container engine:
# deploy/images/cmd/livegate-image assembles each OCI image archive from a static binary and, for
# the edge, the build host's own Debian packages of HAProxy, iptables and conntrack (the versions
# the tests run; apt-get download, cached in IMAGE_DEB_CACHE). deploy/images is a module of its
# own, run with GOWORK=off like deploy/validate. Same commit, same toolchain, same packages: the
# same image digests (images-check builds twice and compares).

IMAGE_DIR ?= bin/images
IMAGE_DEB_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/livegate/debs
IMAGE_SOURCE ?= https://github.com/livegate/livegate
# Every file's mtime and the images' creation time: the commit's, so a rebuild changes nothing.
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
IMAGES := livegate-agent livegate-edgeproxy
IMAGE_TOOL := $(IMAGE_DIR)/.tools/livegate-image
IMAGE_GO := CGO_ENABLED=0 GOOS=linux go build -trimpath -ldflags '-s -w $(LDFLAGS)'

.PHONY: images images-tool images-check images-test images-vet

images-tool:
	@mkdir -p $(IMAGE_DIR)/.tools $(IMAGE_DIR)/.bin
	cd deploy/images && GOWORK=off go build -trimpath -o $(abspath $(IMAGE_TOOL)) ./cmd/livegate-image

# image_build(name, out): the archive of image name at out, from the binary in $(IMAGE_DIR)/.bin.
image_build = $(IMAGE_TOOL) --image $(1) --binary $(IMAGE_DIR)/.bin/$(1) --version '$(VERSION)' \
	--revision '$(REVISION)' --source '$(IMAGE_SOURCE)' --created '$(SOURCE_DATE_EPOCH)' \
	--deb-cache '$(IMAGE_DEB_CACHE)' --out $(2)

images: deps images-tool ## OCI image archives bin/images/livegate-{agent,edgeproxy}.tar (docker load, podman load, crane push)
	$(IMAGE_GO) -o $(IMAGE_DIR)/.bin/livegate-agent ./agent/cmd/livegate-agent
	$(IMAGE_GO) -o $(IMAGE_DIR)/.bin/livegate-edgeproxy ./edgeproxy/cmd/livegate-edgeproxy
	@for i in $(IMAGES); do $(call image_build,$$i,$(IMAGE_DIR)/$$i.tar); done

images-check: images ## Build every image again and fail unless the archives are byte for byte the same
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	for i in $(IMAGES); do $(call image_build,$$i,$$tmp/$$i.tar) >/dev/null; \
	  if cmp -s $(IMAGE_DIR)/$$i.tar $$tmp/$$i.tar; then echo "images-check: $$i reproduced byte for byte"; \
	  else echo "images-check: $$i differs between two builds of the same inputs" >&2; exit 1; fi; done

images-vet: ## gofmt and go vet of deploy/images
	@unformatted=$$(gofmt -l deploy/images); \
	if [ -n "$$unformatted" ]; then echo "gofmt would change:" $$unformatted >&2; exit 1; fi
	cd deploy/images && GOWORK=off go vet ./...

images-test: images-vet images-check ## The images' own tests, then each image run from its unpacked layers (root: network namespaces, chroot)
	cd deploy/images && GOWORK=off go test $(or $(TEST_FLAGS),-count=1) ./...
	cd e2e && LIVEGATE_IMAGES=$(abspath $(IMAGE_DIR)) go test $(or $(TEST_FLAGS),-count=1) ./images/
