#!/usr/bin/env bash
# Installs what `make test` needs on a fresh Debian machine with Rust. Idempotent: each
# step checks first, so a second run does nothing.
set -euo pipefail

need_rust_component() {
  if ! cargo "$1" --version >/dev/null 2>&1; then
    rustup component add "$2"
  fi
}

need_rust_component fmt rustfmt
need_rust_component clippy clippy

# System packages for the end-to-end tests and the demo: podman + runc run build pods
# (`podman kube play`), buildah/skopeo/umoci make and inspect images, docker-registry is
# the local registry, apache2-utils gives htpasswd for registry auth, busybox-static is the
# base of our test images. golang-github-containers-common ships
# /etc/containers/policy.json. Not kubernetes-client: it conflicts with the kubectl that is
# already on the machine image.
# catatonit is only a Recommends of podman, but podman needs it to build the pause image
# of a pod's infra container, so with --no-install-recommends it has to be named.
apt_packages=(
  podman runc conmon catatonit golang-github-containers-common
  buildah skopeo umoci
  docker-registry apache2-utils busybox-static
)

# Root on our machines; sudo elsewhere.
sudo=()
if ((EUID != 0)); then sudo=(sudo); fi

# Ask dpkg first (what `dpkg -s` reports, without a pipe that pipefail could trip on), so
# that a second run neither touches the network nor takes apt's lock.
missing=()
for pkg in "${apt_packages[@]}"; do
  if [[ $(dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null) != "ii " ]]; then
    missing+=("$pkg")
  fi
done

if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Without a policy podman and skopeo refuse to pull. The package above provides it;
# this is the permissive fallback should it ever be missing.
policy=/etc/containers/policy.json
if [[ ! -e $policy ]]; then
  echo "install-deps: writing permissive $policy"
  "${sudo[@]}" mkdir -p "$(dirname "$policy")"
  echo '{"default":[{"type":"insecureAcceptAnything"}]}' | "${sudo[@]}" tee "$policy" >/dev/null
fi
