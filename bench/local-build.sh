#!/usr/bin/env bash
# Times `stagecoach local build` (real pods on podman, push to the local registry)
# beside buildah on the same machine, in one run, in two parts.
#
# Without caches: stagecoach --no-cache beside `buildah bud --layers=false --jobs 1`
# and `--jobs 3`.
# With caches, three builds per round: cold (stagecoach with a new, empty cache
# repository; buildah --layers --no-cache), an unchanged rebuild, and a rebuild after a
# one-file change read only by the final stage (buildah --layers, both).
#
# The cases:
#   classic   examples/hello: a tcc stage compiles, a runtime stage gets the binary
#   parallel  three independent stages of five seconds each (sleep: waiting, as for a
#             download, so the figure shows scheduling rather than this machine's
#             cores) and a final stage copying from all three
# Both cases copy note.txt into their final stage. Both tools push the image to the
# local registry. Each tool builds each case once to warm the node (base images
# pulled), then RUNS times (default 5); the medians and ratios are printed.
#
# usage: bench/local-build.sh      (after `make demo` or `make test` set things up)
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=setup.sh disable=SC1091
. "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
runs=${RUNS:-5}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# case name -> a git repository with its Dockerfile, and an ImageBuild for it
make_case() {
  local name=$1 dir=$work/$1
  mkdir -p "$dir/repo"
  cat >"$dir/repo/Dockerfile"
  shift
  [ $# -eq 0 ] || cp "$@" "$dir/repo/"
  echo "note 0" >"$dir/repo/note.txt"
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

sed -e "s#^ARG REGISTRY=.*#ARG REGISTRY=$registry#" \
  -e "s#^USER 65534#COPY note.txt /etc/note.txt\nUSER 65534#" examples/hello/Dockerfile |
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
COPY note.txt /
DOCKERFILE

seconds() { # runs a command quietly, prints its wall time in seconds
  local start end
  start=$(date +%s.%N)
  "$@" >/dev/null 2>&1 || { echo "bench: failed: $*" >&2; exit 1; }
  end=$(date +%s.%N)
  python3 -c "print(round($end - $start, 3))"
}

# stagecoach CASE [FLAGS...]: one local build of the case
stagecoach() {
  local case=$1
  shift
  ./target/release/stagecoach local build --insecure-registry "$registry" "$@" \
    "$work/$case/build.yaml"
}
# buildah builds, then pushes to the same registry: the same work product as ours.
buildah_build() {
  local case=$1
  shift
  buildah bud --quiet --isolation chroot --tls-verify=false "$@" \
    -t "localhost/bench/$case:buildah" "$work/$case/repo" &&
    buildah push --quiet --tls-verify=false "localhost/bench/$case:buildah" \
      "docker://$registry/bench/$case:buildah"
}
# a new commit that changes only what the final stage reads
change_note() {
  echo "note $2" >"$work/$1/repo/note.txt"
  git -C "$work/$1/repo" -c user.name=bench -c user.email=bench@stagecoach.dev \
    commit --quiet -am "note $2"
}

results=$work/results
for case in classic parallel; do
  for tool in stagecoach buildah-1 buildah-3; do
    run() {
      case $tool in
        stagecoach) seconds stagecoach "$case" --no-cache ;;
        buildah-1) seconds buildah_build "$case" --layers=false --jobs 1 ;;
        buildah-3) seconds buildah_build "$case" --layers=false --jobs 3 ;;
      esac
    }
    run >/dev/null || exit 1 # warm-up
    for _ in $(seq "$runs"); do
      t=$(run) || exit 1
      echo "$case $tool $t" >>"$results"
    done
  done
  for n in $(seq "$runs"); do
    cache=(--cache-repository "$registry/bench/$case/cache-$$-$n")
    echo "$case stagecoach-cold $(seconds stagecoach "$case" "${cache[@]}")" >>"$results"
    echo "$case stagecoach-warm $(seconds stagecoach "$case" "${cache[@]}")" >>"$results"
    change_note "$case" "s$n"
    echo "$case stagecoach-change $(seconds stagecoach "$case" "${cache[@]}")" >>"$results"
    echo "$case buildah-cold $(seconds buildah_build "$case" --layers --no-cache --jobs 3)" >>"$results"
    echo "$case buildah-warm $(seconds buildah_build "$case" --layers --jobs 3)" >>"$results"
    change_note "$case" "b$n"
    echo "$case buildah-change $(seconds buildah_build "$case" --layers --jobs 3)" >>"$results"
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
print()
print(f"with caches: cold, unchanged rebuild, one-file change in the final stage (median of {runs})")
print(f"{'case':<10} {'build':<8} {'stagecoach':>11} {'buildah --layers':>17} {'ratio':>7}")
for case in ("classic", "parallel"):
    for build in ("cold", "warm", "change"):
        s = statistics.median(t[f"{case}/stagecoach-{build}"])
        b = statistics.median(t[f"{case}/buildah-{build}"])
        print(f"{case:<10} {build:<8} {s:>11.2f} {b:>17.2f} {b / s:>6.2f}x")
PY
