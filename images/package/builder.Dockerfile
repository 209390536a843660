# The builder image as `make builder-image` packages it (scripts/package-image.sh): the
# static binary and the CA bundle, already built on this machine, on scratch. The same
# image as images/builder.Dockerfile, which compiles the binary itself.
FROM scratch
COPY stagecoach-builder /stagecoach-builder
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
# rustls reads the CA bundle from here for registries and git over https.
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
LABEL org.opencontainers.image.title="stagecoach-builder"
USER 65532:65532
ENTRYPOINT ["/stagecoach-builder"]
