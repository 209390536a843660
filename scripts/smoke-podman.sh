#!/usr/bin/env bash
# Smoke test of the way the end-to-end tests run build pods without a cluster: render a
# Pod manifest as the operator would, run it with `podman kube play`, then read back what
# the operator needs (exit code, logs, the claim's volume) and clean up. Also the
# reference for how our Rust code drives podman. Needs scripts/registry.sh start and
# scripts/base-images.sh first.
#
# REGISTRY  the local registry (default 127.0.0.1:5000)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source-path=SCRIPTDIR source=podman-env.sh disable=SC1091
. "$root/scripts/podman-env.sh"

registry=${REGISTRY:-127.0.0.1:5000}
image=$registry/stagecoach/busybox:1
# Unique per run, so that a concurrent or crashed run does not collide with this one.
run=$$
pod=stagecoach-smoke-$run
claim=stagecoach-smoke-cache-$run
# podman 4.3 makes an emptyDir a *named* volume called after the pod's volume name and
# shared by every pod that uses that name, so the name must be unique per pod (in
# Kubernetes it only has to be unique within the pod).
workspace=smoke-$run-workspace
main=$pod-main # podman names a pod's containers <pod>-<container>

work=$(mktemp -d)
manifest=$work/pod.yaml
play_log=$work/kube-play.log

fail() {
  echo "smoke-podman: FAIL: $*" >&2
  exit 1
}

cleanup() {
  local rc=$?
  # kube down removes the pod, its containers and the emptyDir volume, never the claim's.
  podman kube down "$manifest" >/dev/null 2>&1 || true
  podman volume rm -f "$claim" "$workspace" >/dev/null 2>&1 || true
  if ((rc != 0)) && [[ -s $play_log ]]; then
    echo "--- podman kube play output:" >&2
    cat "$play_log" >&2
  fi
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT

curl -fsS --noproxy '*' --max-time 5 -o /dev/null "http://$registry/v2/" ||
  fail "no registry at $registry: run scripts/registry.sh start"
skopeo inspect --tls-verify=false --raw "docker://$image" >/dev/null 2>&1 ||
  fail "$image is not in the registry: run scripts/base-images.sh"

# The init container plays the context fetcher (writes into the shared emptyDir); the main
# container plays the stage build: reads it, reaches the registry on 127.0.0.1 (host
# network), writes into the cache claim. Fields that podman 4.3 ignores but a kubelet uses
# (namespace, terminationMessagePolicy, requests) are kept: this is the operator's shape.
cat >"$manifest" <<YAML
apiVersion: v1
kind: Pod
metadata:
  name: $pod
  namespace: default
  labels:
    app.kubernetes.io/name: stagecoach-builder
    app.kubernetes.io/managed-by: stagecoach
    stagecoach.dev/stage: build
  annotations:
    stagecoach.dev/smoke-run: "$run"
spec:
  restartPolicy: Never
  initContainers:
    - name: fetch
      image: $image
      imagePullPolicy: IfNotPresent
      command: ["sh", "-c"]
      args: ['echo "context from init" > /workspace/context.txt']
      volumeMounts:
        - {name: $workspace, mountPath: /workspace}
  containers:
    - name: main
      image: $image
      imagePullPolicy: IfNotPresent
      command: ["sh", "-c"]
      args:
        - |
          set -e
          cat /workspace/context.txt
          wget -q -O /dev/null "http://\$REGISTRY/v2/"
          echo "stage \$STAGE: \$(cat /workspace/context.txt)" > /cache/result.txt
          echo "registry reachable at \$REGISTRY"
      workingDir: /workspace
      env:
        - {name: STAGE, value: build}
        - {name: REGISTRY, value: "$registry"}
      resources:
        requests: {cpu: 100m, memory: 32Mi}
        limits: {memory: 256Mi}
      terminationMessagePolicy: FallbackToLogsOnError
      volumeMounts:
        - {name: $workspace, mountPath: /workspace}
        - {name: cache, mountPath: /cache}
  volumes:
    - name: $workspace
      emptyDir: {}
    - name: cache
      persistentVolumeClaim:
        claimName: $claim
YAML

start=$(date +%s%N)
# kube play returns once the init containers have run (in order) and the main containers
# are started; it fails (exit 125) if an init container fails.
podman kube play --network host --tls-verify=false "$manifest" >"$play_log" 2>&1 ||
  fail "podman kube play failed"
started=$(date +%s%N)

# The main container may still run: wait for it (bounded), then read its state.
timeout 60 podman wait "$main" >/dev/null || fail "$main did not finish within 60s"
finished=$(date +%s%N)
state=$(podman inspect --format '{{.State.Status}} {{.State.ExitCode}}' "$main")
logs=$(podman logs "$main" 2>&1)
# A container that never ran also reports exit code 0: the status must be "exited" too.
[[ $state == "exited 0" ]] || fail "$main: state '$state' (want 'exited 0'); logs: $logs"
[[ $logs == *"context from init"* && $logs == *"registry reachable"* ]] ||
  fail "$main logs do not show the shared emptyDir and the registry: $logs"

# The claim is a podman named volume of the claim's name, created on first use.
mountpoint=$(podman volume inspect --format '{{.Mountpoint}}' "$claim") ||
  fail "no volume for claim $claim"
result=$(cat "$mountpoint/result.txt") || fail "no result.txt in the claim's volume $mountpoint"
[[ $result == "stage build: context from init" ]] || fail "unexpected result.txt: $result"

podman kube down "$manifest" >/dev/null || fail "podman kube down failed"
podman volume rm "$claim" >/dev/null || fail "podman volume rm $claim failed"
if podman pod exists "$pod" || podman volume exists "$workspace"; then
  fail "pod or emptyDir volume left after kube down"
fi

ms() { echo $((($2 - $1) / 1000000)); }
echo "smoke-podman: OK: $main exited 0 (kube play $(ms "$start" "$started") ms," \
  "to exit $(ms "$start" "$finished") ms); claim volume $mountpoint held: $result"
