#!/usr/bin/env bash
# build.sh builds the origin and edge OCI images (`make image`) without a
# container engine:
#
#   1. static binaries: CGO_ENABLED=0 go build ./cmd/origin ./cmd/edge
#   2. tools/image (go-containerregistry) puts each into a one-layer image:
#      the binary, CA certificates, /etc/passwd with "nonroot" (65532), run as
#      65532:65532, nothing writable needed (the chart mounts /tmp);
#   3. both land in one OCI image layout, $IMAGE_DIR/oci, named
#        $REPO/flvcdn-origin:$IMAGE_TAG and $REPO/flvcdn-edge:$IMAGE_TAG
#      (REPO = IMAGE_REPO or ghcr.io/flvcdn, the chart's default), and in an
#      OCI tarball of that layout, $IMAGE_DIR/flvcdn-images.oci.tar, which
#      `ctr images import` and `skopeo copy oci-archive:` read;
#   4. with IMAGE_REPO set, both are pushed there too (credentials from
#      ~/.docker/config.json, e.g. written by `crane auth login`).
#
# Environment: IMAGE_REPO, IMAGE_TAG (default: the chart's appVersion),
# IMAGE_PLATFORM (default linux/<go env GOARCH>), IMAGE_DIR (default dist/images),
# SOURCE_DATE_EPOCH (timestamps; default 0, so equal inputs give equal digests).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
GO=${GO:-go}
chart_version=$(sed -n 's/^appVersion: *//p' deploy/helm/flvcdn/Chart.yaml | tr -d '"\r ')
TAG=${IMAGE_TAG:-$chart_version}
REPO=${IMAGE_REPO:-ghcr.io/flvcdn}
REPO=${REPO%/}
PLATFORM=${IMAGE_PLATFORM:-linux/$($GO env GOARCH)}
DIR=${IMAGE_DIR:-dist/images}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
[[ -n $TAG ]] || { echo "image: no tag (IMAGE_TAG unset and no appVersion in Chart.yaml)" >&2; exit 1; }

out=$DIR/bin/${PLATFORM//\//_}
mkdir -p "$out"
echo "image: building static binaries for $PLATFORM" >&2
CGO_ENABLED=0 GOOS=${PLATFORM%%/*} GOARCH=${PLATFORM#*/} \
	$GO build -trimpath -buildvcs=false -ldflags='-s -w' -o "$out/" ./cmd/origin ./cmd/edge
tool=$DIR/bin/image-tool
$GO build -C tools/image -o "$tool" .

# A fresh layout each time: the layout keeps every blob it was ever given.
rm -rf "$DIR/oci"
push=()
[[ -n ${IMAGE_REPO:-} ]] && push=(--push)
ca=()
[[ -f /etc/ssl/certs/ca-certificates.crt ]] && ca=(--file /etc/ssl/certs/ca-certificates.crt=/etc/ssl/certs/ca-certificates.crt:0644)

build() { # build <component> <ports...>
	local c=$1
	shift
	local ports=()
	for p in "$@"; do ports+=(--port "$p"); done
	"$tool" --ref "$REPO/flvcdn-$c:$TAG" --layout "$DIR/oci" "${push[@]}" --platform "$PLATFORM" \
		--file "$out/$c=/flvcdn-$c:0755" --require-static "${ca[@]}" \
		--account nonroot:65532 --user 65532:65532 --entrypoint "/flvcdn-$c" \
		--env PATH=/ --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt "${ports[@]}" \
		--label org.opencontainers.image.title="flvcdn-$c" \
		--label org.opencontainers.image.version="$TAG" \
		--label org.opencontainers.image.source=https://github.com/flvcdn/flvcdn
}
build origin 1935 8081
build edge 8080
tar -C "$DIR/oci" -cf "$DIR/flvcdn-images.oci.tar" .
echo "image: OCI layout ${DIR#"$ROOT"/}/oci, tarball ${DIR#"$ROOT"/}/flvcdn-images.oci.tar${IMAGE_REPO:+, pushed to $REPO}" >&2
