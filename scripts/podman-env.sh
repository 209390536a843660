#!/usr/bin/env bash
# Source this (`. scripts/podman-env.sh`): points podman, buildah and skopeo at the
# project's containers/ configuration instead of files under /etc.
# No `set -euo pipefail` here: it would leak into the shell that sources this.

# Absolute path of the repository, from this file's own location, so that it works from
# any directory.
_stagecoach_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export CONTAINERS_CONF="$_stagecoach_root/containers/containers.conf"
export CONTAINERS_REGISTRIES_CONF="$_stagecoach_root/containers/registries.conf"
unset _stagecoach_root
