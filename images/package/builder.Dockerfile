# The builder image as `make builder-image` packages it (scripts/image.sh): the static
# binary, the CA bundle, and for ssh:// sources /bin/sh (busybox), the OpenSSH client
# with its libraries and a passwd entry, on scratch.
FROM scratch
COPY rootfs/ /
# rustls reads the CA bundle from here for registries and git over https.
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
# gix finds ssh through PATH.
ENV PATH=/usr/bin:/bin
LABEL org.opencontainers.image.title="stagecoach-builder"
USER 65532:65532
ENTRYPOINT ["/stagecoach-builder"]
