#!/usr/bin/env bash
# Builds one of Stagecoach's images with its own image code (scripts/package-image.sh:
# no Docker, no buildah) and pushes it: FROM scratch, the fully static binary and a CA
# bundle (the builder adds an ssh client, below).
#
# usage: image.sh builder|operator
#   builder   stagecoach-builder: the source and assemble pods, and the init container
#             that installs the builder into stage pods
#   operator  stagecoach: the controller
#
# REGISTRY        where to push (default 127.0.0.1:5000)
# BUILDER_IMAGE   the builder's reference (default $REGISTRY/stagecoach/builder:dev)
# OPERATOR_IMAGE  the operator's reference (default $REGISTRY/stagecoach/operator:dev)
set -euo pipefail
# The image's files are readable by its non-root user whatever the caller's umask.
umask 022

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
name=${1:?usage: image.sh builder|operator}
case $name in
  builder) package=stagecoach-builder binary=stagecoach-builder image=${BUILDER_IMAGE:-} ;;
  operator) package=stagecoach-operator binary=stagecoach image=${OPERATOR_IMAGE:-} ;;
  *) echo "image.sh: no image $name (builder or operator)" >&2; exit 2 ;;
esac
registry=${REGISTRY:-127.0.0.1:5000}
image=${image:-$registry/stagecoach/$name:dev}
target=x86_64-unknown-linux-gnu
path=$root/target/$target/release/$binary

RUSTFLAGS='-C target-feature=+crt-static' cargo build --quiet --release --locked \
  -p "$package" --bin "$binary" --target "$target" --manifest-path "$root/Cargo.toml"
# A static binary has no interpreter; refuse to ship one that does.
if readelf -l "$path" | grep -q 'Requesting program interpreter'; then
  echo "image.sh: $path is not static" >&2
  exit 1
fi
# The packaging runs the builder binary: build it too when packaging the operator.
if [ "$name" != builder ]; then
  RUSTFLAGS='-C target-feature=+crt-static' cargo build --quiet --release --locked \
    -p stagecoach-builder --bin stagecoach-builder --target "$target" --manifest-path "$root/Cargo.toml"
fi
# The image's files: the binary and the CA bundle; the builder also gets what gix needs
# to clone over ssh (it runs `sh -c 'ssh ...'`): busybox as /bin/sh, Debian's OpenSSH
# client with its libraries, and a passwd entry for its uid (ssh refuses to run
# without one).
rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
install -D -m 0755 "$path" "$rootfs/$binary"
install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
if [ "$name" = builder ]; then
  install -D -m 0755 /bin/busybox "$rootfs/bin/sh"
  install -D -m 0755 /usr/bin/ssh "$rootfs/usr/bin/ssh"
  for lib in $(ldd /usr/bin/ssh | awk '$2 == "=>" { print $3 } $1 ~ /^\// { print $1 }'); do
    install -D -m 0755 "$lib" "$rootfs$lib"
  done
  printf 'root:x:0:0:root:/root:/sbin/nologin\nstagecoach:x:65532:65532:stagecoach:/tmp:/sbin/nologin\n' \
    >"$rootfs/etc/passwd"
  printf 'root:x:0:\nstagecoach:x:65532:\n' >"$rootfs/etc/group"
  chmod 0644 "$rootfs/etc/passwd" "$rootfs/etc/group"
fi
"$root/scripts/package-image.sh" "$image" "$root/images/package/$name.Dockerfile" "$rootfs"
# Pods pull with IfNotPresent: refresh podman's copy, or they would run an older image.
if command -v podman >/dev/null; then
  # shellcheck source-path=SCRIPTDIR source=podman-env.sh disable=SC1091
  . "$root/scripts/podman-env.sh"
  podman pull --quiet --tls-verify=false "$image" >/dev/null
fi
