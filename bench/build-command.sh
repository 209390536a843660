#!/usr/bin/env bash
# Times `stagecoach build DIR` (the directory packed into a context artifact, pushed, and
# built through the pods) beside `stagecoach local build` of the same files committed
# to a git repository, and `buildah bud` of the directory plus its push: a C program
# compiled in a tcc stage and shipped in a runtime stage, in a context of FILES files of
# 4 KiB (the source tree a COPY takes) and a .dockerignore'd build directory of BIG_MB
# that neither Stagecoach nor buildah may carry. Every build starts without a stage
# cache. Also prints the context's entries and its packed size.
#
# usage: bench/build-command.sh   (after `make demo` or `make test` set things up)
#        FILES=2000 BIG_MB=50 RUNS=3
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=setup.sh disable=SC1091
. "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
files=${FILES:-2000}
big_mb=${BIG_MB:-50}
runs=${RUNS:-3}

work=$(mktemp -d)
cleanup() {
  buildah rmi -f localhost/bench/build-command:buildah >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

dir=$work/dir
mkdir -p "$dir/src" "$dir/build"
for i in $(seq "$files"); do head -c 4096 /dev/urandom | base64 >"$dir/src/file-$i.txt"; done
head -c $((big_mb << 20)) /dev/urandom >"$dir/build/artifact.bin"
cat >"$dir/hello.c" <<'C'
#include <stdio.h>
int main(void) { puts("hello from a directory"); return 0; }
C
printf 'build/\n*.log\n' >"$dir/.dockerignore"
cat >"$dir/Dockerfile" <<DOCKERFILE
FROM $registry/stagecoach/tcc:1 AS build
WORKDIR /src
COPY . .
RUN tcc -o /hello hello.c && ls src | wc -l > /count
FROM $registry/stagecoach/runtime:1
COPY --from=build /hello /count /usr/local/bin/
CMD ["/usr/local/bin/hello"]
DOCKERFILE

repo=$work/repo
cp -a "$dir" "$repo"
git -C "$repo" init --quiet --initial-branch=main
git -C "$repo" add .
git -C "$repo" -c user.name=bench -c user.email=bench@stagecoach.dev commit --quiet -m bench
cat >"$work/build.yaml" <<YAML
apiVersion: stagecoach.dev/v1alpha1
kind: ImageBuild
metadata:
  name: bench-build-command
spec:
  source:
    git:
      url: file://$repo
      revision: main
  output:
    image: $registry/bench/build-command:git
    insecureRegistry: true
YAML

results=$work/results
from_directory() {
  ./target/release/stagecoach build --no-cache --insecure-registry "$registry" \
    -t "$registry/bench/build-command:dir" "$dir"
}
from_git() {
  ./target/release/stagecoach local build --no-cache --insecure-registry "$registry" \
    "$work/build.yaml"
}
buildah_build() {
  buildah bud --quiet --isolation chroot --tls-verify=false --layers=false \
    -t localhost/bench/build-command:buildah "$dir" &&
    buildah push --quiet --tls-verify=false localhost/bench/build-command:buildah \
      "docker://$registry/bench/build-command:buildah"
}

for _ in $(seq "$runs"); do
  timed stagecoach-build-dir from_directory
  grep '^context ' "$work/last.log" >"$work/context.txt" || true
  timed stagecoach-local-build-git from_git
  timed buildah-bud-dir buildah_build
done

python3 - "$runs" "$files" "$big_mb" "$results" "$work/context.txt" <<'PY'
import collections, statistics, sys
runs, files, big, results, context = sys.argv[1:]
t = collections.defaultdict(list)
for line in open(results):
    label, secs = line.split()
    t[label].append(float(secs))
print(f"context: {files} files of ~5.5 KB and a .dockerignore'd {big} MB directory; "
      f"wall seconds, median of {runs}")
print("  " + open(context).read().strip())
for label in ("stagecoach-build-dir", "stagecoach-local-build-git", "buildah-bud-dir"):
    print(f"  {label:<28} {statistics.median(t[label]):6.2f}  (all: {', '.join(f'{x:.2f}' for x in t[label])})")
PY
