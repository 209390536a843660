#!/usr/bin/env bash
# Times `stagecoach local build` (real pods on podman, push to the local registry)
# beside `buildah bud --jobs 1` and `--jobs 3` on the same machine, in one run:
#   classic   examples/hello: a tcc stage compiles, a runtime stage gets the binary
#   parallel  three independent stages of five seconds each (sleep: waiting, as for a
#             download, so the figure shows scheduling rather than this machine's
#             cores) and a final stage copying from all three
# Both push the image to the local registry. Each tool builds each case once to warm
# its caches (base images pulled), then RUNS times (default 5); the medians and ratios
# are printed.
#
# usage: bench/local-build.sh      (after `make demo` or `make test` set things up)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source-path=SCRIPTDIR source=../scripts/podman-env.sh disable=SC1091
. "$root/scripts/podman-env.sh"
cd "$root"
runs=${RUNS:-5}
registry=${REGISTRY:-127.0.0.1:5000}

./scripts/registry.sh start >/dev/null
./scripts/base-images.sh >/dev/null
./scripts/image.sh builder >/dev/null
cargo build --quiet --release --locked -p stagecoach-operator

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# case name -> a git repository with its Dockerfile, and an ImageBuild for it
make_case() {
  local name=$1 dir=$work/$1
  mkdir -p "$dir/repo"
  cat >"$dir/repo/Dockerfile"
  shift
  [ $# -eq 0 ] || cp "$@" "$dir/repo/"
  git -C "$dir/repo" init --quiet --initial-branch=main
  git -C "$dir/repo" add .
  git -C "$dir/repo" -c user.name=bench -c user.email=bench@stagecoach.dev commit --quiet -m "$name"
  cat >"$dir/build.yaml" <<YAML
apiVersion: stagecoach.dev/v1alpha1
kind: ImageBuild
metadata:
  name: bench-$name
spec:
  source:
    git:
      url: file://$dir/repo
      revision: main
  output:
    image: $registry/bench/$name:latest
    insecureRegistry: true
YAML
}

sed "s#^ARG REGISTRY=.*#ARG REGISTRY=$registry#" examples/hello/Dockerfile |
  make_case classic examples/hello/hello.c
make_case parallel <<DOCKERFILE
FROM $registry/stagecoach/busybox:1 AS one
RUN sleep 5 && echo one > /one
FROM $registry/stagecoach/busybox:1 AS two
RUN sleep 5 && echo two > /two
FROM $registry/stagecoach/busybox:1 AS three
RUN sleep 5 && echo three > /three
FROM $registry/stagecoach/busybox:1
COPY --from=one /one /
COPY --from=two /two /
COPY --from=three /three /
DOCKERFILE

seconds() { # runs a command quietly, prints its wall time in seconds
  local start end
  start=$(date +%s.%N)
  "$@" >/dev/null 2>&1 || { echo "bench: failed: $*" >&2; exit 1; }
  end=$(date +%s.%N)
  python3 -c "print(round($end - $start, 3))"
}

stagecoach() {
  ./target/release/stagecoach local build --insecure-registry "$registry" "$work/$1/build.yaml"
}
# buildah builds, then pushes to the same registry: the same work product as ours.
buildah_jobs() {
  buildah bud --quiet --isolation chroot --tls-verify=false --layers=false --jobs "$2" \
    -t "localhost/bench/$1:buildah" "$work/$1/repo" &&
    buildah push --quiet --tls-verify=false "localhost/bench/$1:buildah" \
      "docker://$registry/bench/$1:buildah"
}

results=$work/results
for case in classic parallel; do
  for tool in stagecoach buildah-1 buildah-3; do
    run() {
      case $tool in
        stagecoach) seconds stagecoach "$case" ;;
        buildah-1) seconds buildah_jobs "$case" 1 ;;
        buildah-3) seconds buildah_jobs "$case" 3 ;;
      esac
    }
    run >/dev/null || exit 1 # warm-up
    for _ in $(seq "$runs"); do
      t=$(run) || exit 1
      echo "$case $tool $t" >>"$results"
    done
  done
done
buildah rmi -f localhost/bench/classic:buildah localhost/bench/parallel:buildah >/dev/null 2>&1 || true

python3 - "$runs" "$results" <<'PY'
import collections, statistics, sys
runs, results = sys.argv[1], sys.argv[2]
t = collections.defaultdict(list)
for line in open(results):
    case, tool, secs = line.split()
    t[f"{case}/{tool}"].append(float(secs))
print(f"wall seconds, median of {runs} runs (after one warm-up each)")
print(f"{'case':<10} {'stagecoach':>11} {'buildah -j1':>12} {'buildah -j3':>12} {'vs -j1':>8} {'vs -j3':>8}")
for case in ("classic", "parallel"):
    s, b1, b3 = (statistics.median(t[f"{case}/{tool}"]) for tool in ("stagecoach", "buildah-1", "buildah-3"))
    print(f"{case:<10} {s:>11.2f} {b1:>12.2f} {b3:>12.2f} {b1 / s:>7.2f}x {b3 / s:>7.2f}x")
print("(ratio > 1: stagecoach is faster)")
PY
