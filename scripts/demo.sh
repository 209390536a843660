#!/usr/bin/env bash
# make demo: builds examples/hello (a C program compiled in a tcc stage, shipped in a
# slim runtime stage) through the real pods on podman, pushes it to the local registry,
# runs it, and compares the sizes of the runtime image and the compiler stage.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source-path=SCRIPTDIR source=podman-env.sh disable=SC1091
. "$root/scripts/podman-env.sh"
cd "$root"

registry=${REGISTRY:-127.0.0.1:5000}
repo=$root/.work/demo-repo
manifest=$root/.work/hello.imagebuild.yaml

./scripts/install-deps.sh
./scripts/registry.sh start
./scripts/base-images.sh
./scripts/image.sh builder >/dev/null
cargo build --quiet --release --locked -p stagecoach-operator

# The example as a git repository the source pod clones (file:// is mounted read-only).
rm -rf "$repo"
mkdir -p "$repo"
cp examples/hello/Dockerfile examples/hello/hello.c "$repo/"
git -C "$repo" init --quiet --initial-branch=main
git -C "$repo" add .
git -C "$repo" -c user.name=demo -c user.email=demo@stagecoach.dev commit --quiet -m "hello"
sed "s#file://.*#file://$repo#" examples/hello.imagebuild.yaml >"$manifest"

# The build is kept (--keep) to measure its compiler stage; removed on any exit.
clean_up() {
  podman volume rm -f hello-workspace >/dev/null 2>&1 || true
  for p in $(podman pod ps --filter label=stagecoach.dev/build=hello --format '{{.Name}}'); do
    podman pod rm -f "$p" >/dev/null
  done
}
trap clean_up EXIT

echo "== stagecoach local build examples/hello.imagebuild.yaml"
image=$(./target/release/stagecoach local build --keep --insecure-registry "$registry" "$manifest" |
  tee /dev/stderr | tail -n 1)

echo
echo "== podman run $image"
podman run --rm --quiet --tls-verify=false "$image"

size() { # compressed size of an image's layers (of its linux/amd64 image), in bytes
  local raw digest
  raw=$(skopeo inspect --raw --tls-verify=false "docker://$1")
  digest=$(jq -r '.manifests[]? | select(.platform.architecture == "amd64") | .digest' <<<"$raw")
  if [[ -n $digest ]]; then
    raw=$(skopeo inspect --raw --tls-verify=false "docker://${1%:*}@$digest")
  fi
  jq '[.layers[].size] | add' <<<"$raw"
}
workspace=$(podman volume inspect hello-workspace --format '{{.Mountpoint}}')
stage_layers=$(python3 -c 'import json,sys; print(sum(l["size"] for l in json.load(open(sys.argv[1]))))' "$workspace/stages/build/layers/index.json")
builder_size=$(($(size "$registry/stagecoach/tcc:1") + stage_layers))
final_size=$(size "${image%%@*}")

echo
printf '== sizes (compressed)\n  runtime image (what ships): %8d bytes\n  compiler stage (stays behind): %8d bytes\n' "$final_size" "$builder_size"
