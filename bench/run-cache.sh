#!/usr/bin/env bash
# Times a Dockerfile whose RUN fetches a few hundred files into a cache mount (a fake
# dependency download from a loopback HTTP server that answers each file after a short
# delay, as a package index does), built twice: the first build fills the cache, the
# second (a new commit, so nothing but the cache mount is reused: stagecoach runs with
# --no-cache, buildah without --layers) finds it. Beside `buildah bud` of the same
# Dockerfile twice, which keeps cache mounts in its own storage on this one host. The
# server's count of requests shows what each build fetched.
#
# usage: bench/run-cache.sh   (after `make demo` or `make test` set things up)
#        FILES=300 DELAY_MS=5 RUNS=3
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=setup.sh disable=SC1091
. "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
files=${FILES:-300}
delay_ms=${DELAY_MS:-5}
runs=${RUNS:-3}

work=$(mktemp -d)
volume=bench-run-cache-$$
cleanup() {
  kill "$server" 2>/dev/null || true
  podman volume rm -f "$volume" >/dev/null 2>&1 || true
  buildah rmi -f localhost/bench/run-cache:buildah >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# The "package index": FILES files of 4 KiB, each served after DELAY_MS.
mkdir -p "$work/index"
: >"$work/requests"
for i in $(seq "$files"); do head -c 4096 /dev/urandom >"$work/index/dep-$i"; done
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 - "$work/index" "$port" "$delay_ms" "$work/requests" <<'PY' &
import functools, http.server, sys, time
root, port, delay, log = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) / 1000, sys.argv[4]
class Slow(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
        time.sleep(delay)
        with open(log, "a") as f:
            f.write(self.path + "\n")
        super().do_GET()
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", port), functools.partial(Slow, directory=root)).serve_forever()
PY
server=$!

mkdir -p "$work/repo"
cat >"$work/repo/Dockerfile" <<DOCKERFILE
FROM $registry/stagecoach/busybox:1 AS build
RUN --mount=type=cache,id=deps,target=/var/cache/deps \\
    cd /var/cache/deps && for i in \$(seq $files); do \\
      [ -s dep-\$i ] || wget -q http://127.0.0.1:$port/dep-\$i || exit 1; done && \\
    cat dep-* | md5sum > /deps.md5
FROM $registry/stagecoach/busybox:1
COPY --from=build /deps.md5 /
COPY note.txt /
DOCKERFILE
echo "note 0" >"$work/repo/note.txt"
git -C "$work/repo" init --quiet --initial-branch=main
git -C "$work/repo" add .
git -C "$work/repo" -c user.name=bench -c user.email=bench@stagecoach.dev commit --quiet -m bench
cat >"$work/build.yaml" <<YAML
apiVersion: stagecoach.dev/v1alpha1
kind: ImageBuild
metadata:
  name: bench-run-cache
spec:
  source:
    git:
      url: file://$work/repo
      revision: main
  output:
    image: $registry/bench/run-cache:latest
    insecureRegistry: true
YAML

new_commit() {
  echo "note $1" >"$work/repo/note.txt"
  git -C "$work/repo" -c user.name=bench -c user.email=bench@stagecoach.dev \
    commit --quiet -am "note $1"
}
# seconds LABEL COMMAND...: wall time and the files fetched, one line into results
results=$work/results
seconds() {
  local label=$1 start end before after
  shift
  before=$(wc -l <"$work/requests")
  start=$(date +%s.%N)
  "$@" >"$work/last.log" 2>&1 || { cat "$work/last.log" >&2; echo "bench: failed: $*" >&2; exit 1; }
  end=$(date +%s.%N)
  after=$(wc -l <"$work/requests")
  echo "$label $(python3 -c "print(round($end - $start, 3))") $((after - before))" >>"$results"
}
stagecoach() {
  ./target/release/stagecoach local build --insecure-registry "$registry" --no-cache \
    --run-cache-volume "$volume" "$work/build.yaml"
}
buildah_build() {
  buildah bud --quiet --isolation chroot --tls-verify=false --layers=false \
    -t localhost/bench/run-cache:buildah "$work/repo" &&
    buildah push --quiet --tls-verify=false localhost/bench/run-cache:buildah \
      "docker://$registry/bench/run-cache:buildah"
}

for n in $(seq "$runs"); do
  podman volume rm -f "$volume" >/dev/null 2>&1 || true
  new_commit "s$n-1"
  seconds stagecoach-first stagecoach
  new_commit "s$n-2"
  seconds stagecoach-second stagecoach
  # buildah keeps cache mounts in its storage; a prune empties them.
  buildah prune --force >/dev/null 2>&1 || true
  new_commit "b$n-1"
  seconds buildah-first buildah_build
  new_commit "b$n-2"
  seconds buildah-second buildah_build
done

python3 - "$runs" "$files" "$delay_ms" "$results" <<'PY'
import collections, statistics, sys
runs, files, delay, results = sys.argv[1:]
t, fetched = collections.defaultdict(list), collections.defaultdict(list)
for line in open(results):
    label, secs, n = line.split()
    t[label].append(float(secs))
    fetched[label].append(int(n))
print(f"RUN --mount=type=cache: {files} files of 4 KiB, {delay} ms each from a loopback server;")
print(f"wall seconds, median of {runs} rounds; files fetched in brackets")
print(f"{'build':<8} {'stagecoach':>16} {'buildah bud':>16}")
for build in ("first", "second"):
    s, b = f"stagecoach-{build}", f"buildah-{build}"
    cell = lambda k: f"{statistics.median(t[k]):.2f} ({max(fetched[k])})"
    print(f"{build:<8} {cell(s):>16} {cell(b):>16}")
PY
