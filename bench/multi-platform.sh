#!/usr/bin/env bash
# Times a build for linux/amd64 and linux/arm64 at once: `stagecoach build --platform
# linux/amd64,linux/arm64` beside `buildah bud --platform linux/amd64,linux/arm64
# --jobs 1 --manifest` plus its push, on this amd64 machine (arm64 under qemu). The
# Dockerfile has a stage every platform shares (a generator compiled and run on the
# build platform), a stage per TARGETARCH on the build platform, a compile per platform
# on that platform's tcc, and a COPY-only runtime stage. Also prints the stage pods
# Stagecoach runs beside the count a whole build per platform needs
# (`stagecoach-builder plan --platform`). Every build starts without a stage cache.
#
# usage: bench/multi-platform.sh   (after `make demo` or `make test` set things up)
#        RUNS=3 PRIMES=100000000
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=setup.sh disable=SC1091
. "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
runs=${RUNS:-3}
primes=${PRIMES:-100000000}

work=$(mktemp -d)
list=localhost/bench/multi-platform:list
cleanup() {
  buildah manifest rm "$list" >/dev/null 2>&1 || true
  buildah rmi --prune >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

dir=$work/dir
mkdir -p "$dir"
cat >"$dir/gen.c" <<C
#include <stdio.h>
#include <stdlib.h>
int main(void) {
  int n = $primes, count = 0;
  char *composite = calloc(n + 1, 1);
  for (long i = 2; i <= n; i++) {
    if (composite[i]) continue;
    count++;
    for (long j = i * i; j <= n; j += i) composite[j] = 1;
  }
  printf("%d primes up to %d\n", count, n);
  return 0;
}
C
cat >"$dir/hello.c" <<'C'
#include <stdio.h>
int main(void) { puts("hello from every platform"); return 0; }
C
cat >"$dir/Dockerfile" <<DOCKERFILE
FROM --platform=\$BUILDPLATFORM $registry/stagecoach/tcc:1 AS assets
WORKDIR /src
COPY gen.c .
RUN tcc -o /gen gen.c && /gen > /assets.txt
FROM --platform=\$BUILDPLATFORM $registry/stagecoach/busybox:1 AS config
ARG TARGETARCH
RUN echo "arch=\$TARGETARCH" > /config.txt
FROM $registry/stagecoach/tcc:1 AS build
WORKDIR /src
COPY hello.c .
RUN tcc -o /hello hello.c
FROM $registry/stagecoach/runtime:1
COPY --from=assets /assets.txt /srv/
COPY --from=config /config.txt /srv/
COPY --from=build /hello /usr/local/bin/
CMD ["/usr/local/bin/hello"]
DOCKERFILE

results=$work/results
stagecoach_build() {
  ./target/release/stagecoach build --no-cache --insecure-registry "$registry" \
    --platform linux/amd64,linux/arm64 -t "$registry/bench/multi-platform:stagecoach" "$dir"
}
buildah_build() {
  buildah manifest rm "$list" >/dev/null 2>&1 || true
  buildah bud --quiet --isolation chroot --tls-verify=false --layers=false --jobs 1 \
    --platform linux/amd64,linux/arm64 --manifest "$list" "$dir" &&
    buildah manifest push --all --quiet --tls-verify=false "$list" \
      "docker://$registry/bench/multi-platform:buildah"
}

for _ in $(seq "$runs"); do
  timed stagecoach-build stagecoach_build
  grep 'stage pod(s) ran' "$work/last.log" >"$work/pods.txt" || true
  timed buildah-bud-jobs-1 buildah_build
done
cargo run -q --release --locked -p stagecoach-builder -- plan -f "$dir/Dockerfile" \
  --platform linux/amd64,linux/arm64 >"$work/plan.txt"

python3 - "$runs" "$primes" "$results" "$work/pods.txt" "$work/plan.txt" <<'PY'
import collections, statistics, sys
runs, primes, results, pods, plan = sys.argv[1:]
t = collections.defaultdict(list)
for line in open(results):
    label, secs = line.split()
    t[label].append(float(secs))
print(f"linux/amd64 + linux/arm64 on this amd64 machine (arm64 under qemu); a shared stage "
      f"sieving {primes}; wall seconds, median of {runs}")
for label in ("stagecoach-build", "buildah-bud-jobs-1"):
    print(f"  {label:<20} {statistics.median(t[label]):6.2f}  (all: {', '.join(f'{x:.2f}' for x in t[label])})")
print("  stagecoach: " + open(pods).read().strip())
for line in open(plan):
    if line.startswith("  pod ") or line.startswith("stage pods:"):
        print("  plan: " + line.strip())
PY
