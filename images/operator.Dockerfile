# syntax=docker/dockerfile:1
# The operator image: `stagecoach` (the controller, `stagecoach operator`),
# fully static, with a CA bundle, on scratch. Build it from the repository root:
#
#   docker build -f images/operator.Dockerfile -t registry.example.com/stagecoach/operator:0.1.0 .
#   buildah bud -f images/operator.Dockerfile -t registry.example.com/stagecoach/operator:0.1.0 .
#
# or with Stagecoach itself (examples/stagecoach-images.imagebuild.yaml), for every
# platform at once: `--platform linux/amd64,linux/arm64` (buildx, buildah) or
# `spec.platforms`. The build stage runs on each platform's Rust image, natively, and
# links for that platform (glibc, statically linked; no musl, no cross linker needed).
ARG RUST_IMAGE=docker.io/library/rust:1.95-bookworm

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
ARG TARGETARCH
# Cache mounts keep the crate registry and the target directory between builds (Docker,
# buildah and Stagecoach all honour them); the binary leaves the cache in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    case "$TARGETARCH" in \
      amd64) triple=x86_64-unknown-linux-gnu ;; \
      arm64) triple=aarch64-unknown-linux-gnu ;; \
      *) echo "no Rust target for $TARGETARCH" >&2; exit 1 ;; \
    esac \
 && RUSTFLAGS='-C target-feature=+crt-static' \
      cargo build --release --locked -p stagecoach-operator --bin stagecoach --target "$triple" \
 && mkdir -p /out/etc/ssl/certs \
 && install -m 0755 "target/$triple/release/stagecoach" /out/stagecoach \
 && install -m 0644 /etc/ssl/certs/ca-certificates.crt /out/etc/ssl/certs/ca-certificates.crt \
 && if readelf -l /out/stagecoach | grep -q 'program interpreter'; then \
      echo "stagecoach is not static" >&2; exit 1; \
    fi

FROM scratch
COPY --from=build /out/ /
# rustls reads the CA bundle from here (SSL_CERT_FILE) for registries and git over https.
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
LABEL org.opencontainers.image.title="stagecoach" \
      org.opencontainers.image.source="https://github.com/stagecoach-dev/stagecoach" \
      org.opencontainers.image.licenses="Apache-2.0"
# The non-root uid the chart and build pods run as.
USER 65532:65532
ENTRYPOINT ["/stagecoach"]
