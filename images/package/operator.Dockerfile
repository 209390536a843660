# The operator image as `make operator-image` packages it (scripts/image.sh): the static
# binary and the CA bundle on scratch. The same image as images/operator.Dockerfile,
# which compiles the binary itself.
FROM scratch
COPY rootfs/ /
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
LABEL org.opencontainers.image.title="stagecoach"
USER 65532:65532
ENTRYPOINT ["/stagecoach"]
