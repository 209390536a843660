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

# timed LABEL CMD...: runs CMD with its output in $work/last.log (shown if it fails) and
# appends "LABEL SECONDS" (wall time) to $results; callers set work and results.
timed() {
  local label=$1 start end
  shift
  start=$(date +%s.%N)
  "$@" >"$work/last.log" 2>&1 || { cat "$work/last.log" >&2; echo "bench: failed: $*" >&2; exit 1; }
  end=$(date +%s.%N)
  echo "$label $(python3 -c "print(round($end - $start, 3))")" >>"$results"
}
