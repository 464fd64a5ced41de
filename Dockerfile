# syntax=docker/dockerfile:1
# Images of flvcdn: one build stage, two small final images.
#
#   docker build --target origin -t ghcr.io/flvcdn/flvcdn-origin:0.1.0 .
#   docker build --target edge   -t ghcr.io/flvcdn/flvcdn-edge:0.1.0 .
#
# The binaries are static (CGO_ENABLED=0) and run as the distroless "nonroot"
# user (65532), matching the chart's securityContext; the root filesystem can
# be mounted read-only.

ARG GO_VERSION=1.26

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION}-bookworm AS build
WORKDIR /src
# Dependencies first, so a source change does not re-download modules.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG TARGETOS=linux
ARG TARGETARCH
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -buildvcs=false -ldflags="-s -w" \
      -o /out/ ./cmd/origin ./cmd/edge \
 && mv /out/origin /out/flvcdn-origin \
 && mv /out/edge /out/flvcdn-edge

# distroless/static: CA certificates, tzdata, /etc/passwd with nonroot; no shell.
FROM gcr.io/distroless/static-debian12:nonroot AS origin
COPY --from=build /out/flvcdn-origin /flvcdn-origin
USER 65532:65532
EXPOSE 1935 8081
ENTRYPOINT ["/flvcdn-origin"]

FROM gcr.io/distroless/static-debian12:nonroot AS edge
COPY --from=build /out/flvcdn-edge /flvcdn-edge
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/flvcdn-edge"]
