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
# busybox, tcc and runtime are image indexes of linux/amd64 and linux/arm64, made from
# each architecture's Debian packages (arm64 programs run under qemu-user-static, which
# scripts/install-deps.sh registers); git-ssh is linux/amd64 only, made of this host's
# programs. tcc and runtime are the busybox layer plus one layer each. An image whose
# tag already exists in the registry (as an index with arm64, where it should be one) is
# skipped (BASE_IMAGES_FORCE=1 rebuilds all).
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

for tool in buildah skopeo podman dpkg-deb apt-get git ssh jq; do
  command -v "$tool" >/dev/null || die "$tool not found: run scripts/install-deps.sh"
done
curl -fsS --noproxy '*' --max-time 5 -o /dev/null "http://$registry/v2/" ||
  die "no registry answers at $registry: run scripts/registry.sh start"

in_registry() {
  skopeo inspect --tls-verify=false --raw "docker://$1" >/dev/null 2>&1
}

# Whether the registry has the tag as an index with an arm64 image.
has_arm64() {
  skopeo inspect --tls-verify=false --raw "docker://$1" 2>/dev/null |
    jq -e '.manifests[]? | select(.platform.architecture == "arm64")' >/dev/null
}

wanted() { # REF [multi]
  if [[ $force != 1 ]] && in_registry "$1" && { [[ ${2:-} != multi ]] || has_arm64 "$1"; }; then
    log "$1 exists, skipped"
    return 1
  fi
}

# The local name of an image's variant for an architecture: amd64 keeps the tag.
local_ref() { # REF ARCH
  if [[ $2 == amd64 ]]; then echo "$1"; else echo "$1-linux-$2"; fi
}

# The candidate .deb of a package for an architecture, downloaded once into .work/debs;
# prints its path.
deb() { # PKG ARCH
  local pkg=$1 arch=$2 version file
  version=$(apt-cache policy "$pkg:$arch" | awk '/Candidate:/ {print $2}')
  [[ -n $version && $version != "(none)" ]] ||
    die "no candidate version for $pkg:$arch (apt-get update? scripts/install-deps.sh adds arm64)"
  # apt-get download names files pkg_version_arch.deb with the epoch's colon as %3a;
  # architecture-independent packages are _all.
  file=$(compgen -G "$debs/${pkg}_${version/:/%3a}_${arch}.deb" ||
    compgen -G "$debs/${pkg}_${version/:/%3a}_all.deb" || true)
  if [[ -z $file ]]; then
    mkdir -p "$debs"
    # Sandbox user root: _apt cannot write into .work/debs, and apt warns about it.
    (cd "$debs" && apt-get -qq -o APT::Sandbox::User=root download "$pkg:$arch=$version") >&2
    file=$(compgen -G "$debs/${pkg}_${version/:/%3a}_${arch}.deb" ||
      compgen -G "$debs/${pkg}_${version/:/%3a}_all.deb") ||
      die "apt-get download $pkg:$arch gave no file"
  fi
  echo "${file%%$'\n'*}"
}

# Extracts packages of an architecture into a root directory, without their
# documentation (copyright kept).
extract() { # DIR ARCH PKG...
  local dir=$1 arch=$2 pkg
  shift 2
  mkdir -p "$dir"
  for pkg in "$@"; do
    dpkg-deb -x "$(deb "$pkg" "$arch")" "$dir"
  done
  rm -rf "$dir"/usr/share/{man,info,lintian,doc-base}
  if [[ -d $dir/usr/share/doc ]]; then
    find "$dir/usr/share/doc" -type f ! -name copyright -delete
    find "$dir/usr/share/doc" -depth -type d -empty -delete
  fi
}

# glibc binaries name /lib64/ld-linux-x86-64.so.2 (arm64: /lib/ld-linux-aarch64.so.1) as
# their interpreter. bookworm's libc6 ships that link (to /lib/<triplet>/...); with a
# merged-/usr libc6 the loader is in usr/lib only, so make the link resolve inside the
# root either way.
ensure_loader() { # DIR ARCH
  local dir=$1 loader=ld-linux-x86-64.so.2 triplet=x86_64-linux-gnu libdir=lib64 target=""
  if [[ $2 == arm64 ]]; then
    loader=ld-linux-aarch64.so.1 triplet=aarch64-linux-gnu libdir=lib
  fi
  for candidate in lib/$triplet usr/lib/$triplet usr/lib64; do
    if [[ -f $dir/$candidate/$loader && ! -L $dir/$candidate/$loader ]]; then
      target=/$candidate/$loader
      break
    fi
  done
  [[ -n $target ]] || die "no $loader in $dir"
  # Resolve the link as the container would, relative to the root, not the host's /.
  local link=$dir/$libdir/$loader dest
  if [[ -L $link ]]; then
    dest=$(readlink "$link")
    [[ $dest == /* ]] || dest=/$libdir/$dest
    [[ -f $dir$dest ]] && return 0
  fi
  if [[ -f $link && ! -L $link ]]; then
    return 0
  fi
  if [[ -L $dir/$libdir || -e $link ]]; then
    die "$dir/$libdir/$loader exists but does not resolve inside the root"
  fi
  mkdir -p "$dir/$libdir"
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

# Pushes the amd64 and arm64 variants of REF (local_ref names) as one image index.
push_index() { # REF
  local list=localhost/stagecoach-base-index
  buildah manifest rm "$list" >/dev/null 2>&1 || true
  buildah manifest create "$list" >/dev/null
  buildah manifest add "$list" "$(local_ref "$1" amd64)" >/dev/null
  buildah manifest add "$list" "$(local_ref "$1" arm64)" >/dev/null
  buildah manifest push --quiet --all --tls-verify=false "$list" "docker://$1"
  buildah manifest rm "$list" >/dev/null
  log "pushed $1 (linux/amd64, linux/arm64)"
}

# Runs a command in a local image of an architecture (arm64 under qemu).
run_in() { # ARCH REF ARGS...
  local arch=$1 ref=$2
  shift 2
  podman run --rm --network none --pull never --platform "linux/$arch" "$ref" "$@"
}

build_busybox() { # ARCH
  local arch=$1 dir=$work/busybox-$1 bb applet ref
  local unpacked=$work/busybox-static-$1
  ref=$(local_ref "$busybox_ref" "$arch")
  mkdir -p "$unpacked"
  dpkg-deb -x "$(deb busybox-static "$arch")" "$unpacked"
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

  commit_layer scratch "$dir" "$ref" \
    --os linux --arch "$arch" \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd '["sh"]' \
    --created-by "stagecoach scripts/base-images.sh: busybox-static" \
    --label org.opencontainers.image.description="busybox-static from Debian"
  run_in "$arch" "$ref" sh -c 'id -un && ls / >/dev/null' >/dev/null ||
    die "$ref does not run sh"
  [[ $(run_in "$arch" "$ref" uname -m) == "$(uname_m "$arch")" ]] ||
    die "$ref does not run as $arch"
}

uname_m() { if [[ $1 == arm64 ]]; then echo aarch64; else echo x86_64; fi; }

build_tcc() { # ARCH
  local arch=$1 dir=$work/tcc-$1 ref
  ref=$(local_ref "$tcc_ref" "$arch")
  extract "$dir" "$arch" "${tcc_pkgs[@]}"
  ensure_loader "$dir" "$arch"
  commit_layer "$(local_ref "$busybox_ref" "$arch")" "$dir" "$ref" \
    --created-by "stagecoach scripts/base-images.sh: ${tcc_pkgs[*]}" \
    --label org.opencontainers.image.description="busybox + tcc and glibc from Debian"
  local out
  out=$(run_in "$arch" "$ref" sh -c \
    'printf "#include <stdio.h>\nint main(){puts(\"hi\");}" >/tmp/h.c && tcc -o /tmp/h /tmp/h.c && /tmp/h') ||
    die "$ref cannot compile and run a C program"
  [[ $out == hi ]] || die "$ref: hello world printed '$out'"
}

build_runtime() { # ARCH
  local arch=$1 dir=$work/runtime-$1 ref tcc
  ref=$(local_ref "$runtime_ref" "$arch")
  tcc=$(local_ref "$tcc_ref" "$arch")
  extract "$dir" "$arch" "${runtime_pkgs[@]}"
  ensure_loader "$dir" "$arch"
  commit_layer "$(local_ref "$busybox_ref" "$arch")" "$dir" "$ref" \
    --created-by "stagecoach scripts/base-images.sh: ${runtime_pkgs[*]}" \
    --label org.opencontainers.image.description="busybox + glibc from Debian (distroless/base shape)"

  # A program built by tcc in the tcc image must run here (it links glibc dynamically).
  local out=$work/out-$arch
  mkdir -p "$out"
  podman run --rm --network none --pull never --platform "linux/$arch" -v "$out:/out" "$tcc" sh -c \
    'printf "#include <stdio.h>\nint main(){puts(\"hi\");}" >/tmp/h.c && tcc -o /out/h /tmp/h.c' ||
    die "cannot compile the runtime test program in $tcc"
  [[ $(podman run --rm --network none --pull never --platform "linux/$arch" -v "$out:/out" "$ref" /out/h) == hi ]] ||
    die "$ref cannot run a program built by tcc"
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

# busybox first, for both architectures: the others are built on top of it (in local
# storage: made again here whenever any of them is wanted, pushed only when wanted).
want_busybox=0 want_tcc=0 want_runtime=0 want_git_ssh=0
wanted "$busybox_ref" multi && want_busybox=1
wanted "$tcc_ref" multi && want_tcc=1
wanted "$runtime_ref" multi && want_runtime=1
wanted "$git_ssh_ref" && want_git_ssh=1
if ((want_busybox + want_tcc + want_runtime + want_git_ssh)); then
  for arch in amd64 arm64; do build_busybox "$arch"; done
fi
((want_busybox)) && push_index "$busybox_ref"
# The runtime check compiles with tcc: tcc is made locally whenever runtime is wanted.
if ((want_tcc + want_runtime)); then
  for arch in amd64 arm64; do build_tcc "$arch"; done
fi
((want_tcc)) && push_index "$tcc_ref"
if ((want_runtime)); then
  for arch in amd64 arm64; do build_runtime "$arch"; done
  push_index "$runtime_ref"
fi
if ((want_git_ssh)); then
  build_git_ssh
  push "$git_ssh_ref"
fi
