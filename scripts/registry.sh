#!/usr/bin/env bash
# Runs the CNCF distribution registry (Debian's docker-registry) in the background for the
# end-to-end tests and the demo: plain HTTP on loopback, storage under .work/ (git-ignored).
# The package's init script is not used: there is no systemd or init on our machines.
#
#   scripts/registry.sh start|stop|status
#
# REGISTRY_ADDR  listen address (default 127.0.0.1:5000)
# REGISTRY_DIR   config, storage, log and pid file (default .work/registry in the repo)
# REGISTRY_WAIT  seconds to wait for the registry to answer (default 30)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
addr=${REGISTRY_ADDR:-127.0.0.1:5000}
dir=${REGISTRY_DIR:-$root/.work/registry}
wait_s=${REGISTRY_WAIT:-30}
config=$dir/config.yml
log=$dir/registry.log
pidfile=$dir/registry.pid
url=http://$addr/v2/

die() {
  echo "registry: $*" >&2
  exit 1
}

# The registry's /v2/ endpoint answers 200 (or 401 with auth) once it serves requests.
answers() {
  curl -fsS --noproxy '*' --max-time 2 -o /dev/null "$url" 2>/dev/null
}

# Something accepts TCP connections on the address (a registry or anything else).
listening() {
  (exec 3<>"/dev/tcp/${addr%:*}/${addr##*:}") 2>/dev/null
}

# The pid from our pid file, if that process is still a docker-registry.
our_pid() {
  local pid
  [[ -r $pidfile ]] || return 1
  pid=$(<"$pidfile")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  [[ $(cat "/proc/$pid/comm" 2>/dev/null) == docker-registry ]] || return 1
  echo "$pid"
}

# The process just started is alive (a zombie counts as gone).
starting() {
  local state
  state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ -n $state && $state != Z ]]
}

start() {
  local pid
  command -v docker-registry >/dev/null || die "docker-registry not found: run scripts/install-deps.sh"
  if answers; then
    echo "registry: already running at $addr"
    return 0
  fi
  if listening; then
    die "something that is not a registry listens on $addr (set REGISTRY_ADDR)"
  fi
  if pid=$(our_pid); then
    die "pid $pid from $pidfile runs but does not answer on $addr; see $log or run: $0 stop"
  fi

  mkdir -p "$dir/data"
  # Rewritten on every start so that it always matches REGISTRY_ADDR. Delete is enabled so
  # tests can remove what they pushed.
  cat >"$config" <<YAML
version: 0.1
log:
  level: info
  fields: {service: registry}
storage:
  filesystem: {rootdirectory: $dir/data}
  delete: {enabled: true}
http:
  addr: $addr
  # A fixed upload-state secret (not a credential) instead of a random one per start,
  # which the registry warns about.
  secret: stagecoach-local-registry
YAML

  # setsid: its own session, so that it outlives this script and the caller's Ctrl-C.
  # The registry reads REGISTRY_* variables as configuration overrides: drop ours.
  setsid env -u REGISTRY_ADDR -u REGISTRY_DIR -u REGISTRY_WAIT \
    docker-registry serve "$config" </dev/null >>"$log" 2>&1 &
  echo $! >"$pidfile"

  local deadline=$((SECONDS + wait_s))
  until answers; do
    # Not our_pid: until setsid and env have exec'd, the process is not yet called
    # docker-registry.
    if ! starting "$(<"$pidfile")"; then
      tail -n 20 "$log" >&2 || true
      rm -f "$pidfile"
      die "docker-registry exited during start-up; log: $log"
    fi
    if ((SECONDS >= deadline)); then
      tail -n 20 "$log" >&2 || true
      # Do not leave a half-started registry holding the address.
      kill "$(<"$pidfile")" 2>/dev/null || true
      rm -f "$pidfile"
      die "no answer from $url after ${wait_s}s, stopped it; log: $log"
    fi
    sleep 0.2
  done
  echo "registry: started at $addr (pid $(<"$pidfile"), storage $dir/data)"
}

stop() {
  local pid
  if ! pid=$(our_pid); then
    rm -f "$pidfile"
    echo "registry: not running (no live pid in $pidfile)"
    return 0
  fi
  kill "$pid"
  # Bounded wait for a clean exit, then insist.
  for _ in $(seq 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    kill -9 "$pid"
  fi
  rm -f "$pidfile"
  echo "registry: stopped (pid $pid)"
}

status() {
  local pid
  if answers; then
    if pid=$(our_pid); then
      echo "registry: running at $addr (pid $pid, storage $dir/data)"
    else
      echo "registry: a registry answers at $addr (not started by this script)"
    fi
    return 0
  fi
  echo "registry: not answering at $addr"
  return 3
}

case ${1:-} in
start) start ;;
stop) stop ;;
status) status ;;
*)
  echo "usage: $0 start|stop|status" >&2
  exit 2
  ;;
esac
