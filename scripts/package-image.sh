#!/usr/bin/env bash
# Packages a directory into an image with Stagecoach's own image code (no Docker, no
# buildah) and pushes it: the directory (as `rootfs/`) and a Dockerfile of COPY and
# metadata instructions become a build context, `stagecoach-builder plan` plans it, and
# `stagecoach-builder assemble` builds the layers and pushes the image (an index of its
# platform), as the assemble pod does for a COPY-only final stage.
#
# usage: package-image.sh IMAGE DOCKERFILE ROOTFS_DIR
#   REGISTRY  a registry reached over plain HTTP (default 127.0.0.1:5000)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ $# -ne 3 ]; then
  echo "usage: package-image.sh IMAGE DOCKERFILE ROOTFS_DIR" >&2
  exit 2
fi
image=$1 dockerfile=$2 rootfs=$3
registry=${REGISTRY:-127.0.0.1:5000}
builder=$root/target/x86_64-unknown-linux-gnu/release/stagecoach-builder

workspace=$(mktemp -d)
trap 'rm -rf "$workspace"' EXIT
mkdir -p "$workspace/source"
cp "$dockerfile" "$workspace/source/Dockerfile"
cp -a "$rootfs" "$workspace/source/rootfs"
# An image index of the platforms whose binaries can be made here: linux/amd64 (the
# toolchain here links for x86_64 only; a cluster builds both platforms from
# images/*.Dockerfile, see examples/stagecoach-images.imagebuild.yaml). The workspace
# takes the layout of a build for several platforms, so the assemble step pushes an
# index.
platform=linux/amd64
mkdir -p "$workspace/platforms/${platform//\//-}"
"$builder" plan -f "$workspace/source/Dockerfile" --platform "$platform" --format json \
  >"$workspace/platforms/${platform//\//-}/plan.json"
printf '{"version":"stagecoach.dev/plan/v1","buildPlatform":{"os":"linux","architecture":"amd64"},"platforms":[{"os":"linux","architecture":"amd64"}],"sharedStages":[]}\n' \
  >"$workspace/platforms.json"
# The commit time keeps the image reproducible: the same commit gives the same digest.
epoch=$(git -C "$root" log -1 --format=%ct 2>/dev/null || echo 0)
"$builder" assemble --workspace "$workspace" --image "$image" \
  --insecure-registry "$registry" --source-date-epoch "$epoch" >/dev/null
echo "$image"
