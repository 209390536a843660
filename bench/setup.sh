# Sourced by the bench scripts: podman's settings, the local registry, the base images,
# the builder image and a release `stagecoach`, from the repository root.
# shellcheck shell=bash
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source-path=SCRIPTDIR source=../scripts/podman-env.sh disable=SC1091
. "$root/scripts/podman-env.sh"
cd "$root"
registry=${REGISTRY:-127.0.0.1:5000}

./scripts/registry.sh start >/dev/null
./scripts/base-images.sh >/dev/null
./scripts/image.sh builder >/dev/null
cargo build --quiet --release --locked -p stagecoach-operator
