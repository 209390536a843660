#!/usr/bin/env bash
# Builds the builder image (FROM scratch: the static stagecoach-builder and a CA bundle,
# nothing else) and pushes it to the local registry. Build pods use it as the init
# container that installs the builder, and as the image of the source and assemble pods.
#
# REGISTRY       where to push (default 127.0.0.1:5000)
# BUILDER_IMAGE  the reference to push (default $REGISTRY/stagecoach/builder:dev)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source-path=SCRIPTDIR source=podman-env.sh disable=SC1091
. "$root/scripts/podman-env.sh"

registry=${REGISTRY:-127.0.0.1:5000}
image=${BUILDER_IMAGE:-$registry/stagecoach/builder:dev}
binary=$root/target/x86_64-unknown-linux-gnu/release/stagecoach-builder

make -C "$root" --no-print-directory builder-static >/dev/null
# A static binary has no interpreter; refuse to ship one that does.
if readelf -l "$binary" | grep -q 'Requesting program interpreter'; then
  echo "builder-image: $binary is not static" >&2
  exit 1
fi

ctr=$(buildah from scratch)
trap 'buildah rm "$ctr" >/dev/null 2>&1 || true' EXIT
buildah copy --quiet --chmod 0755 "$ctr" "$binary" /stagecoach-builder >/dev/null
buildah copy --quiet --chmod 0644 "$ctr" /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt >/dev/null
buildah config --entrypoint '["/stagecoach-builder"]' --user 65532:65532 \
  --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt "$ctr"
buildah commit --quiet --rm "$ctr" "$image" >/dev/null
trap - EXIT
buildah push --quiet --tls-verify=false "$image" "docker://$image"
echo "$image"
