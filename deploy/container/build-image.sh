#!/usr/bin/env bash
# Builds the dropblockd container image (deploy/container/Containerfile) from Debian's own
# packages, tagged as deploy/kubernetes/daemonset.yaml names it: dropblockd:<meson.build's version>.
#
#   deploy/container/build-image.sh            (make image)
#   deploy/container/build-image.sh --tools    only install podman, mmdebstrap and runc
#
# 1. a Debian minbase from this machine's Debian apt sources (mmdebstrap), added FROM scratch as
#    localhost/dropblockd-base:<suite>; no registry is ever asked for an image (--pull=never);
# 2. the multi-stage Containerfile on it, from the sources of the last commit (git archive HEAD;
#    IMAGE_REVISION=<commit>: that commit's; IMAGE_SOURCE=worktree: the tracked and untracked,
#    not ignored, files as they are now).
# Reproducible: SOURCE_DATE_EPOCH is that commit's time (mmdebstrap's file times, podman's
# --timestamp for layers and dates, useradd's /etc/shadow), so the same commit and the same Debian
# packages give the same layers, bit for bit (the image ids differ: each history entry names the
# intermediate image of its step, and --omit-history would defeat the layer cache). The only
# network use is apt, on the Debian sources.
#
# Environment: IMAGE (the tag), DEBIAN_SUITE (bookworm), DEBIAN_SOURCES (an apt sources file: the
# machine's Debian entries by default), IMAGE_REVISION, IMAGE_SOURCE (head|worktree), EXTRA_PACKAGES,
# BUILDAH_ISOLATION (chroot: RUN steps need no OCI runtime, which crun refuses on a machine with
# hybrid cgroups), PODMAN_STORAGE_DRIVER (podman's configured driver by default).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"

# "sudo" when not root and sudo exists, "" as root; fails when neither (scripts/install-deps.sh)
as_root() {
  if [ "$(id -u)" -eq 0 ]; then echo ""; elif command -v sudo >/dev/null 2>&1; then echo sudo; else return 1; fi
}

# podman and mmdebstrap to build; runc for tests/test_image.py's `podman run` (crun refuses a
# machine with hybrid cgroups, as here). Non-interactive, and nothing to do when all are there.
ensure_tools() {
  local missing=() p sudo
  for p in podman mmdebstrap runc; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "build-image: ${missing[*]} missing and no apt-get here: install them" >&2
    return 1
  fi
  if ! sudo=$(as_root); then
    echo "build-image: ${missing[*]} missing and not root; run: apt-get install ${missing[*]}" >&2
    return 1
  fi
  echo "build-image: installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

ensure_tools
[ "${1:-}" = --tools ] && exit 0

start=$(date +%s)
version=$(sed -n "s/^[[:space:]]*version[[:space:]]*:[[:space:]]*'\([^']*\)'.*/\1/p" meson.build | head -n1)
[ -n "$version" ] || { echo "build-image: no version in meson.build" >&2; exit 1; }
image=${IMAGE:-dropblockd:$version}
suite=${DEBIAN_SUITE:-bookworm}
base=localhost/dropblockd-base:$suite
source_kind=${IMAGE_SOURCE:-head}
# one commit for the date, the label and the sources, though others may commit meanwhile
revision=$(git rev-parse "${IMAGE_REVISION:-HEAD}^{commit}")
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct "$revision")}

podman=(podman)
[ -n "${PODMAN_STORAGE_DRIVER:-}" ] && podman+=(--storage-driver "$PODMAN_STORAGE_DRIVER")
build=("${podman[@]}" build --pull=never --isolation "${BUILDAH_ISOLATION:-chroot}" --timestamp "$SOURCE_DATE_EPOCH")
# EXTRA_PACKAGES (set, even empty): the Containerfile's, e.g. "" for no CPU devices or
# "pocl-opencl-icd mesa-vulkan-drivers intel-opencl-icd" for OpenCL on Intel GPUs
extra=()
[ -n "${EXTRA_PACKAGES+set}" ] && extra=(--build-arg "EXTRA_PACKAGES=$EXTRA_PACKAGES")

work=$(mktemp -d "${TMPDIR:-/tmp}/dropblockd-image.XXXXXX")
trap 'rm -rf "$work"' EXIT

# the apt sources: DEBIAN_SOURCES, else this machine's Debian entries (deb822 files naming a
# debian mirror, one-line "deb" entries), else mmdebstrap's default mirror
sources=$work/debian.sources
if [ -n "${DEBIAN_SOURCES:-}" ]; then
  cp "$DEBIAN_SOURCES" "$sources"
else
  : > "$sources"
  for f in /etc/apt/sources.list.d/*.sources; do
    if [ -f "$f" ] && grep -qE '^URIs:.*debian' "$f"; then
      { cat "$f"; echo; } >> "$sources"
    fi
  done
  if [ ! -s "$sources" ]; then
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
      if [ -f "$f" ]; then grep -E '^deb[[:space:]].*debian' "$f" >> "$sources" || true; fi
    done
  fi
fi
mirror=()
[ -s "$sources" ] && mirror=("$sources")
aptopt=()
# a machine whose mirror is a snapshot (expired Release files) tells apt so; the base must too
if apt-config dump 2>/dev/null | grep -q '^Acquire::Check-Valid-Until "false"'; then
  aptopt=(--aptopt='Acquire::Check-Valid-Until "false"')
fi

echo "build-image: $image from Debian $suite, sources of $source_kind ($revision)," \
  "SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH"
mkdir "$work/base"
# no manuals or translations: nothing in the image reads them (the copyright files stay)
mmdebstrap --quiet --variant=minbase --format=tar "${aptopt[@]}" \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  "$suite" "$work/base/rootfs.tar" "${mirror[@]}"
# FROM scratch + ADD rather than `podman import`: the layer and its history get --timestamp too
printf 'FROM scratch\nADD rootfs.tar /\nCMD ["/bin/bash"]\n' > "$work/base/Containerfile"
"${build[@]}" --format docker -t "$base" -f "$work/base/Containerfile" "$work/base"
rm -f "$work/base/rootfs.tar"

mkdir "$work/src"
case $source_kind in
  head) git archive --format=tar "$revision" | tar -x -C "$work/src" ;;
  worktree)
    git ls-files -z -c -o --exclude-standard | tar --null -T - --ignore-failed-read -cf - | tar -x -C "$work/src" ;;
  *) echo "build-image: IMAGE_SOURCE is head or worktree, not $source_kind" >&2; exit 2 ;;
esac
# the Containerfile of the same sources; --format docker keeps its HEALTHCHECK (OCI has none)
"${build[@]}" --format docker --layers \
  --build-arg "BASE=$base" --build-arg "VERSION=$version" --build-arg "REVISION=$revision" \
  --build-arg "SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH" "${extra[@]}" \
  -f "$work/src/deploy/container/Containerfile" -t "$image" "$work/src"

id=$("${podman[@]}" image inspect --format '{{.Id}}' "$image")
echo "build-image: built $image ($id) in $(($(date +%s) - start)) s"
