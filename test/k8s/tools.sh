#!/usr/bin/env bash
# tools.sh builds the Kubernetes control-plane tools used by test/k8s/run.sh from
# the Go module proxy, once, into a git-ignored cache keyed by tool and version:
#
#   $CACHE/tools/<tool>@<version>/<binary>   the build
#   $CACHE/bin/<binary>                      symlinks to the pinned builds
# with CACHE=${K8S_TOOLS_CACHE:-~/.cache/flvcdn/k8s-tools}
#
# A warm run only checks that the binaries exist (seconds). A cold run takes
# ~15 minutes on 2 cores. The versions are pinned exactly: newer ones may be
# missing from the module proxy mirror reachable here (see shared/k8s/NOTES.md).
#
# kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy
# (and kubectl when the machine has none) come from the tools/k8s/kube module,
# etcd from tools/k8s/etcd, CoreDNS from tools/k8s/coredns and the pod
# sandbox program from tools/k8s/pause; none touches the product's go.mod.
# kwok, helm and metrics-server are `go install`ed at their release tags.
#
# Usage: bash test/k8s/tools.sh      (prints the bin directory on its last line)
set -euo pipefail

ETCD_VERSION=3.5.35
KUBE_VERSION=1.32.2
KWOK_VERSION=0.7.0
COREDNS_VERSION=1.11.4
METRICS_SERVER_VERSION=0.7.2
HELM_VERSION=3.19.5

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# Outside the work tree by default: CI runs in a fresh clone on the same machine,
# so a cache under the checkout would be cold on every run.
CACHE=${K8S_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/flvcdn/k8s-tools}
BIN=$CACHE/bin
mkdir -p "$CACHE/tools" "$BIN"

log() { printf '[tools %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# One build at a time: a second caller waits instead of racing on the cache.
exec 9>"$CACHE/.lock"
flock 9

export CGO_ENABLED=0 GOFLAGS=-buildvcs=false

# build <tool@version dir> <binary> <command...>: runs the command with OUT set
# to a scratch directory, then moves OUT/<binary> into place atomically.
build() {
	local dir=$CACHE/tools/$1 bin=$2
	shift 2
	if [[ -x $dir/$bin ]]; then
		ln -sfn "$dir/$bin" "$BIN/$bin"
		return 0
	fi
	log "building $bin ($(basename "$dir")) ..."
	local start=$SECONDS
	mkdir -p "$dir"
	OUT=$(mktemp -d "$dir/.build.XXXXXX")
	export OUT
	if ! "$@"; then
		rm -rf "$OUT"
		log "FAILED: $bin"
		return 1
	fi
	mv -f "$OUT/$bin" "$dir/$bin"
	rm -rf "$OUT"
	ln -sfn "$dir/$bin" "$BIN/$bin"
	log "built $bin in $((SECONDS - start))s"
}

build_etcd() {
	(cd "$ROOT/tools/k8s/etcd" && go build -trimpath -ldflags='-s -w' -o "$OUT/etcd" .)
}

KUBE_LDFLAGS="-s -w \
 -X k8s.io/component-base/version.gitVersion=v$KUBE_VERSION \
 -X k8s.io/component-base/version.gitMajor=${KUBE_VERSION%%.*} \
 -X k8s.io/component-base/version.gitMinor=$(cut -d. -f2 <<<"$KUBE_VERSION") \
 -X k8s.io/component-base/version.gitTreeState=clean \
 -X k8s.io/client-go/pkg/version.gitVersion=v$KUBE_VERSION \
 -X k8s.io/client-go/pkg/version.gitMajor=${KUBE_VERSION%%.*} \
 -X k8s.io/client-go/pkg/version.gitMinor=$(cut -d. -f2 <<<"$KUBE_VERSION")"

build_kube() { # build_kube <binary>
	(cd "$ROOT/tools/k8s/kube" && go build -trimpath -ldflags="$KUBE_LDFLAGS" -o "$OUT/$1" "k8s.io/kubernetes/cmd/$1")
}

build_coredns() {
	(cd "$ROOT/tools/k8s/coredns" && go build -trimpath -ldflags='-s -w' -o "$OUT/coredns" .)
}

# The pod sandbox program of the real node (node.sh); keyed by the hash of its
# source, since it has no release version.
build_pause() {
	(cd "$ROOT/tools/k8s/pause" && go build -trimpath -ldflags='-s -w' -o "$OUT/pause" .)
}

build_metrics_server() {
	GOBIN=$OUT go install -trimpath -ldflags='-s -w' "sigs.k8s.io/metrics-server/cmd/metrics-server@v$METRICS_SERVER_VERSION"
}

build_kwok() {
	GOBIN=$OUT go install -trimpath -ldflags='-s -w' "sigs.k8s.io/kwok/cmd/kwok@v$KWOK_VERSION"
}

build_helm() {
	# A plain build believes the cluster is Kubernetes 1.20 (lint and template
	# Capabilities) and reports version v3.19; stamp what the Makefile would.
	local k8s_minor
	k8s_minor=$(cut -d. -f2 <<<"$KUBE_VERSION")
	GOBIN=$OUT go install -trimpath -ldflags="-s -w \
 -X helm.sh/helm/v3/internal/version.version=v$HELM_VERSION \
 -X helm.sh/helm/v3/internal/version.gitTreeState=clean \
 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 \
 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$k8s_minor \
 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 \
 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$k8s_minor" \
		"helm.sh/helm/v3/cmd/helm@v$HELM_VERSION"
}

start=$SECONDS
# Cheapest first, so a failure in the module proxy shows up early.
build "etcd@$ETCD_VERSION" etcd build_etcd
build "helm@$HELM_VERSION" helm build_helm
build "kwok@$KWOK_VERSION" kwok build_kwok
for b in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy; do
	build "kubernetes@$KUBE_VERSION" "$b" build_kube "$b"
done
build "coredns@$COREDNS_VERSION" coredns build_coredns
build "metrics-server@$METRICS_SERVER_VERSION" metrics-server build_metrics_server
build "pause@$(cat "$ROOT/tools/k8s/pause/go.mod" "$ROOT/tools/k8s/pause/main.go" | sha256sum | cut -c1-12)" pause build_pause
# kubectl: use the machine's when it has one (any 1.31–1.33 client works).
if ! command -v kubectl >/dev/null 2>&1 || [[ ${K8S_TOOLS_BUILD_KUBECTL:-} == 1 ]]; then
	build "kubernetes@$KUBE_VERSION" kubectl build_kube kubectl
fi
log "tools ready in $((SECONDS - start))s"
echo "$BIN"
