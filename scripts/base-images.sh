#!/usr/bin/env bash
# Builds the base images the end-to-end tests and the demo use, from Debian packages (no
# public image can be pulled on our machines), and pushes them to the local registry:
#
#   stagecoach/busybox:1  busybox-static with its applet links, /etc/passwd, /tmp
#   stagecoach/tcc:1      busybox + tcc + glibc headers/libs: a C compiler
#   stagecoach/runtime:1  busybox + glibc only (the shape of distroless/base)
#   stagecoach/git-ssh:1  busybox + git and the OpenSSH client with their libraries (the
#                         RUN --mount=type=ssh test clones through the agent with it)
#
# tcc and runtime are the busybox layer plus one layer each. An image whose tag already
# exists in the registry is skipped (BASE_IMAGES_FORCE=1 rebuilds all).
#
# REGISTRY  where to push (default 127.0.0.1:5000; start it with scripts/registry.sh)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source-path=SCRIPTDIR source=podman-env.sh disable=SC1091
. "$root/scripts/podman-env.sh"

registry=${REGISTRY:-127.0.0.1:5000}
force=${BASE_IMAGES_FORCE:-0}
debs=$root/.work/debs
busybox_ref=$registry/stagecoach/busybox:1
tcc_ref=$registry/stagecoach/tcc:1
runtime_ref=$registry/stagecoach/runtime:1
git_ssh_ref=$registry/stagecoach/git-ssh:1
# Image timestamps (config and file mtimes) are pinned so that rebuilding from the same
# .deb files gives the same layers.
epoch=0

tcc_pkgs=(tcc libc6 libc6-dev libgcc-s1 linux-libc-dev libcrypt1 libcrypt-dev)
runtime_pkgs=(libc6 libgcc-s1)

work=$(mktemp -d)
cleanup() {
  # Roots extracted from .debs: plain files, but some are read-only directories.
  chmod -R u+w "$work" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

log() { echo "base-images: $*"; }
die() {
  echo "base-images: $*" >&2
  exit 1
}

for tool in buildah skopeo podman dpkg-deb apt-get git ssh; do
  command -v "$tool" >/dev/null || die "$tool not found: run scripts/install-deps.sh"
done
curl -fsS --noproxy '*' --max-time 5 -o /dev/null "http://$registry/v2/" ||
  die "no registry answers at $registry: run scripts/registry.sh start"

in_registry() {
  skopeo inspect --tls-verify=false --raw "docker://$1" >/dev/null 2>&1
}

wanted() {
  if [[ $force != 1 ]] && in_registry "$1"; then
    log "$1 exists, skipped"
    return 1
  fi
}

# The candidate .deb of each package, downloaded once into .work/debs; prints its path.
deb() {
  local pkg=$1 version file
  version=$(apt-cache policy "$pkg" | awk '/Candidate:/ {print $2}')
  [[ -n $version && $version != "(none)" ]] || die "no candidate version for $pkg (apt-get update?)"
  # apt-get download names files pkg_version_arch.deb with the epoch's colon as %3a.
  file=$(compgen -G "$debs/${pkg}_${version/:/%3a}_*.deb" | head -n 1 || true)
  if [[ -z $file ]]; then
    mkdir -p "$debs"
    # Sandbox user root: _apt cannot write into .work/debs, and apt warns about it.
    (cd "$debs" && apt-get -qq -o APT::Sandbox::User=root download "$pkg=$version") >&2
    file=$(compgen -G "$debs/${pkg}_${version/:/%3a}_*.deb" | head -n 1) ||
      die "apt-get download $pkg gave no file"
  fi
  echo "$file"
}

# Extracts packages into a root directory, without their documentation (copyright kept).
extract() {
  local dir=$1 pkg
  shift
  mkdir -p "$dir"
  for pkg in "$@"; do
    dpkg-deb -x "$(deb "$pkg")" "$dir"
  done
  rm -rf "$dir"/usr/share/{man,info,lintian,doc-base}
  if [[ -d $dir/usr/share/doc ]]; then
    find "$dir/usr/share/doc" -type f ! -name copyright -delete
    find "$dir/usr/share/doc" -depth -type d -empty -delete
  fi
}

# glibc binaries name /lib64/ld-linux-x86-64.so.2 as their interpreter. bookworm's libc6
# ships that link (to /lib/x86_64-linux-gnu/...); with a merged-/usr libc6 the loader is in
# usr/lib only, so make the link resolve inside the root either way.
ensure_loader() {
  local dir=$1 loader=ld-linux-x86-64.so.2 target=""
  for candidate in lib/x86_64-linux-gnu usr/lib/x86_64-linux-gnu usr/lib64; do
    if [[ -f $dir/$candidate/$loader && ! -L $dir/$candidate/$loader ]]; then
      target=/$candidate/$loader
      break
    fi
  done
  [[ -n $target ]] || die "no $loader in $dir"
  # Resolve the link as the container would, relative to the root, not the host's /.
  local link=$dir/lib64/$loader dest
  if [[ -L $link ]]; then
    dest=$(readlink "$link")
    [[ $dest == /* ]] || dest=/lib64/$dest
    [[ -f $dir$dest ]] && return 0
  fi
  if [[ -L $dir/lib64 || -e $link ]]; then
    die "$dir/lib64/$loader exists but does not resolve inside the root"
  fi
  mkdir -p "$dir/lib64"
  ln -sfn "$target" "$link"
}

# Commits the contents of a directory as one new layer on top of base ("scratch" or an
# image) and names it ref in local storage. buildah mount + cp -a keeps owners and modes
# (buildah copy would chown everything to root).
commit_layer() {
  local base=$1 dir=$2 ref=$3 ctr mnt
  shift 3
  ctr=$(buildah from --pull=false --tls-verify=false --quiet "$base")
  mnt=$(buildah mount "$ctr")
  cp -a "$dir/." "$mnt/"
  buildah umount "$ctr" >/dev/null
  buildah config "$@" "$ctr"
  buildah commit --quiet --rm --timestamp "$epoch" "$ctr" "$ref" >/dev/null
}

push() {
  buildah push --quiet --tls-verify=false "$1" "docker://$1"
  log "pushed $1"
}

build_busybox() {
  local dir=$work/busybox bb applet
  local unpacked=$work/busybox-static
  mkdir -p "$unpacked"
  dpkg-deb -x "$(deb busybox-static)" "$unpacked"
  bb=$unpacked/bin/busybox

  mkdir -p "$dir"/{bin,sbin,usr/bin,usr/sbin,etc,root,home/app,tmp}
  install -m 0755 "$bb" "$dir/bin/busybox"
  # The links `busybox --install -s` would make, without running anything in a chroot.
  while read -r applet; do
    [[ -e $dir/$applet || -L $dir/$applet ]] || ln -s /bin/busybox "$dir/$applet"
  done < <("$bb" --list-full)
  [[ -L $dir/bin/sh ]] || die "busybox gave no bin/sh applet"

  chmod 1777 "$dir/tmp"
  chmod 0700 "$dir/root"
  chown 1000:1000 "$dir/home/app"
  cat >"$dir/etc/passwd" <<'TXT'
root:x:0:0:root:/root:/bin/sh
app:x:1000:1000:app:/home/app:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
TXT
  cat >"$dir/etc/group" <<'TXT'
root:x:0:
app:x:1000:
nobody:x:65534:
TXT

  commit_layer scratch "$dir" "$busybox_ref" \
    --os linux --arch amd64 \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd '["sh"]' \
    --created-by "stagecoach scripts/base-images.sh: busybox-static" \
    --label org.opencontainers.image.description="busybox-static from Debian"
  podman run --rm --network none --pull never "$busybox_ref" \
    sh -c 'id -un && ls / >/dev/null' >/dev/null ||
    die "$busybox_ref does not run sh"
}

build_tcc() {
  local dir=$work/tcc
  extract "$dir" "${tcc_pkgs[@]}"
  ensure_loader "$dir"
  commit_layer "$busybox_ref" "$dir" "$tcc_ref" \
    --created-by "stagecoach scripts/base-images.sh: ${tcc_pkgs[*]}" \
    --label org.opencontainers.image.description="busybox + tcc and glibc from Debian"
  local out
  out=$(podman run --rm --network none --pull never "$tcc_ref" sh -c \
    'printf "#include <stdio.h>\nint main(){puts(\"hi\");}" >/tmp/h.c && tcc -o /tmp/h /tmp/h.c && /tmp/h') ||
    die "$tcc_ref cannot compile and run a C program"
  [[ $out == hi ]] || die "$tcc_ref: hello world printed '$out'"
}

build_runtime() {
  local dir=$work/runtime
  extract "$dir" "${runtime_pkgs[@]}"
  ensure_loader "$dir"
  commit_layer "$busybox_ref" "$dir" "$runtime_ref" \
    --created-by "stagecoach scripts/base-images.sh: ${runtime_pkgs[*]}" \
    --label org.opencontainers.image.description="busybox + glibc from Debian (distroless/base shape)"

  # A program built by tcc in the tcc image must run here (it links glibc dynamically).
  local out=$work/out
  mkdir -p "$out"
  podman run --rm --network none --pull missing --tls-verify=false -v "$out:/out" "$tcc_ref" sh -c \
    'printf "#include <stdio.h>\nint main(){puts(\"hi\");}" >/tmp/h.c && tcc -o /out/h /tmp/h.c' ||
    die "cannot compile the runtime test program in $tcc_ref"
  [[ $(podman run --rm --network none --pull never -v "$out:/out" "$runtime_ref" /out/h) == hi ]] ||
    die "$runtime_ref cannot run a program built by tcc"
}

# The installed git and ssh with the libraries they load (as scripts/image.sh gives the
# builder its ssh); git runs its helpers (index-pack) from its exec path.
build_git_ssh() {
  local dir=$work/git-ssh bin lib
  for bin in /usr/bin/git /usr/bin/ssh; do
    install -D -m 0755 "$bin" "$dir$bin"
    for lib in $(ldd "$bin" | awk '$2 == "=>" { print $3 } $1 ~ /^\// { print $1 }'); do
      [[ -e $dir$lib ]] || install -D -m 0755 "$lib" "$dir$lib"
    done
  done
  mkdir -p "$dir/usr/lib/git-core"
  ln -s /usr/bin/git "$dir/usr/lib/git-core/git"
  commit_layer "$busybox_ref" "$dir" "$git_ssh_ref" \
    --created-by "stagecoach scripts/base-images.sh: git and ssh" \
    --label org.opencontainers.image.description="busybox + git + OpenSSH client"
  podman run --rm --network none --pull never "$git_ssh_ref" \
    sh -c 'git --version && ssh -V' >/dev/null 2>&1 ||
    die "$git_ssh_ref does not run git and ssh"
}

# busybox first: the other are built on top of it (pulled back if only the registry
# has it).
if wanted "$busybox_ref"; then
  build_busybox
  push "$busybox_ref"
fi
if wanted "$tcc_ref"; then
  build_tcc
  push "$tcc_ref"
fi
if wanted "$runtime_ref"; then
  build_runtime
  push "$runtime_ref"
fi
if wanted "$git_ssh_ref"; then
  build_git_ssh
  push "$git_ssh_ref"
fi
