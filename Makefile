# flvcdn — see README.md. Every target works on a fresh machine with only Go;
# `make test` installs the external tools the tests need (Debian packages, as root).
SHELL := /bin/bash
GO ?= go
BIN ?= bin
FUZZTIME ?= 30s
TEST_TIMEOUT ?= 30m

# Ports for `make run` (override: make run EDGE_ADDR=:9090).
RTMP_ADDR ?= :1935
EDGE_ADDR ?= :8080
ORIGIN_HTTP ?= 127.0.0.1:8081
NATS_ADDR ?= 127.0.0.1:4222

.PHONY: all build run test test-tools test-unit test-e2e test-k8s test-node image fuzz bench vet fmt clean

all: build

build:
	$(GO) build -o $(BIN)/flvcdn-origin ./cmd/origin
	$(GO) build -o $(BIN)/flvcdn-edge ./cmd/edge

# The whole pipeline on a laptop: origin with an embedded NATS server (the registry
# lives in its JetStream KV), an edge, and testdata/demo.flv looped as live/demo.
run: build
	@trap 'kill $$o $$e 2>/dev/null; wait' INT TERM EXIT; \
	$(BIN)/flvcdn-origin --embedded-nats $(NATS_ADDR) --rtmp-addr $(RTMP_ADDR) --http-addr $(ORIGIN_HTTP) \
	  --source live/demo=testdata/demo.flv --drain-grace 2s & o=$$!; \
	for i in $$(seq 100); do curl -fs http://$(ORIGIN_HTTP)/readyz >/dev/null 2>&1 && break; sleep 0.1; done; \
	$(BIN)/flvcdn-edge --nats-url nats://$(NATS_ADDR) --http-addr $(EDGE_ADDR) --drain-grace 2s & e=$$!; \
	ep=$(lastword $(subst :, ,$(EDGE_ADDR))); rp=$(lastword $(subst :, ,$(RTMP_ADDR))); \
	echo; echo "  console: http://localhost:$$ep/console      (live streams and nodes across the cluster)"; \
	echo "  page:    http://localhost:$$ep/"; \
	echo "  play:    http://localhost:$$ep/live/demo.flv   (ffplay, VLC, ffmpeg -i, flv.js, mpegts.js)"; \
	echo "  publish: ffmpeg -re -i in.mp4 -c:v libx264 -c:a aac -f flv rtmp://localhost:$$rp/live/mystream"; \
	echo "           then play http://localhost:$$ep/live/mystream.flv  (Ctrl-C stops everything)"; echo; \
	wait $$o $$e

# OCI images of origin and edge without a container engine (go-containerregistry,
# tools/image): dist/images/oci (layout) and dist/images/flvcdn-images.oci.tar,
# named ghcr.io/flvcdn/flvcdn-{origin,edge}:<chart appVersion> as the chart's
# defaults. `make image IMAGE_REPO=registry.example.com/me` names and pushes them there.
image:
	@IMAGE_REPO=$(IMAGE_REPO) IMAGE_TAG=$(IMAGE_TAG) GO=$(GO) bash tools/image/build.sh

# Installs what the tests need when it is missing (Debian packages, as root).
test-tools:
	@bash test/tools.sh

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l cmd pkg test)" || { gofmt -l cmd pkg test; echo "gofmt needed"; exit 1; }

test-unit:
	$(GO) test -race -count=1 ./pkg/... ./test/publish/...

test-e2e: test-tools
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./test/e2e/...

# Unit, integration and end-to-end tests, with real nats-server, redis-server,
# ffmpeg/ffprobe and headless Chromium. The e2e suite runs once, against origin and
# edge binaries built with -race (a race report in their logs fails the test).
test: test-tools vet
	$(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) ./pkg/... ./cmd/... ./test/publish/...
	FLVCDN_E2E_RACE=1 $(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./test/e2e/...
	# The edge's memory bound under slow viewers, on a plain build (race builds inflate RSS).
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) -run 'TestChaosSlowViewersSkipThenDropOthersUnaffected' ./test/e2e/

# A real control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok)
# built from the Go module proxy into ~/.cache/flvcdn, then chart and janitor
# checks; then the chart's pods on a real node (test-node, needs root).
test-k8s:
	bash test/k8s/run.sh
	bash test/k8s/node.sh

# A real node (containerd, runc, CNI bridge, kubelet, kube-proxy, CoreDNS) with
# the chart's pods running from the `make image` images; needs root. Its last
# line starts with "real node:". See test/k8s/node.sh.
test-node:
	bash test/k8s/node.sh

# Runs every fuzz target for FUZZTIME each.
fuzz:
	@set -e; for spec in \
	  pkg/flv:FuzzReader pkg/flv:FuzzParseMetadata pkg/bus:FuzzDecode \
	  pkg/rtmp:FuzzChunkNormalizer pkg/httpflv:FuzzParsePath pkg/edge:FuzzJoiner \
	  pkg/probe:FuzzRead pkg/h2:FuzzConn; do \
	  pkg=$${spec%%:*}; fn=$${spec##*:}; echo "== $$pkg $$fn ($(FUZZTIME))"; \
	  $(GO) test -run '^$$' -fuzz "^$$fn$$" -fuzztime $(FUZZTIME) ./$$pkg; done

# Load generator: figures and ratios, never pass/fail. `make bench BENCH_ARGS=--quick`.
bench: build
	$(GO) run ./test/bench $(BENCH_ARGS)

clean:
	rm -rf $(BIN)
