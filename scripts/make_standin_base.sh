#!/usr/bin/env bash
# Build a local stand-in for the CUDA runtime base image, for hosts that cannot pull
# nvidia/cuda (no registry access) but can reach a Debian mirror.
#
# Usage: scripts/make_standin_base.sh [--workdir DIR] [--force] [IMAGE]
#
#   IMAGE       name of the image to create (default localhost/xpcnn-standin-base:latest)
#   --workdir   where the debootstrapped rootfs tarball is cached
#               (default /var/tmp/xpcnn-standin); a second run reuses it
#   --force     rebuild the image (and the rootfs) even if they exist
#
# The image is a minimal Debian bookworm (debootstrap --variant=minbase) with python3,
# python3-venv, python3-pip and ca-certificates. It stands in for the real base only as
# "a Debian-family distro with a Python"; it has no CUDA, so the GPU extra is not installed
# on top of it (see scripts/container_check.sh). Needs root; installs debootstrap and
# buildah with apt-get if they are missing. The Debian mirror is the one apt uses here.
set -euo pipefail

image="localhost/xpcnn-standin-base:latest"
workdir="/var/tmp/xpcnn-standin"
force=0
suite="bookworm"
packages="python3,python3-venv,python3-pip,ca-certificates"

while [ $# -gt 0 ]; do
    case "$1" in
        --workdir) workdir="$2"; shift 2 ;;
        --force) force=1; shift ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        -*) echo "make_standin_base.sh: unknown option $1" >&2; exit 2 ;;
        *) image="$1"; shift ;;
    esac
done

log() { printf '[make_standin_base] %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    log "must run as root (debootstrap and buildah need it)"
    exit 1
fi

missing=()
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
command -v buildah >/dev/null 2>&1 || missing+=(buildah)
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ "$force" -eq 0 ] && buildah inspect --type image "$image" >/dev/null 2>&1; then
    log "$image already exists; nothing to do (--force rebuilds it)"
    exit 0
fi

# The first Debian mirror apt is configured with for $suite (deb822 .sources or one-line
# format), so debootstrap goes through the same route as apt on this host.
find_mirror() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        # Stanzas are separated by blank lines; take URIs of a "deb" stanza listing $suite.
        awk -v suite="$suite" '
            function flush() {
                if (types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " suite " ") && uris != "") {
                    split(uris, u, " "); print u[1]; found = 1; exit
                }
                types = ""; suites = ""; uris = ""
            }
            /^[ \t]*$/ { flush(); next }
            /^[ \t]*#/ { next }
            tolower($1) == "types:"  { $1 = ""; types = $0 }
            tolower($1) == "uris:"   { $1 = ""; uris = $0 }
            tolower($1) == "suites:" { $1 = ""; suites = $0 }
            END { if (!found) flush() }
        ' "$f" | sed 's/^ *//'
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        # deb [options] URI SUITE COMPONENTS...
        sed -e 's/#.*//' -e 's/\[[^]]*\]//' "$f" \
            | awk -v suite="$suite" '$1 == "deb" && $3 == suite { print $2 }'
    done
}
mirror="$(find_mirror | head -n 1)"
if [ -z "$mirror" ]; then
    mirror="http://deb.debian.org/debian"
    log "no apt source for $suite found; falling back to $mirror"
fi
log "mirror: $mirror"

mkdir -p "$workdir"
tarball="$workdir/rootfs-$suite.tar"
if [ "$force" -eq 1 ] || [ ! -s "$tarball" ]; then
    rootfs="$workdir/rootfs-$suite"
    rm -rf "$rootfs" "$tarball.tmp"
    log "debootstrap $suite (minbase + $packages) into $rootfs"
    debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs" "$mirror"
    # Trim what an image does not need: package caches and lists, docs, man pages.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
        "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* \
        "$rootfs"/usr/share/info/* "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/*
    # debootstrap leaves the host's resolv.conf/hostname in place; the runtime supplies them.
    : > "$rootfs/etc/resolv.conf"
    tar --numeric-owner --xattrs -C "$rootfs" -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf "$rootfs"
else
    log "reusing $tarball"
fi

ctr="$(buildah from scratch)"
trap 'buildah rm "$ctr" >/dev/null 2>&1 || true' EXIT
log "importing $tarball"
buildah add --quiet "$ctr" "$tarball" /
buildah config \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 \
    --cmd /bin/bash \
    --label org.opencontainers.image.description="xpcnn stand-in base: Debian $suite minbase + python3" \
    "$ctr"
buildah commit --quiet --rm "$ctr" "$image" >/dev/null
trap - EXIT
log "created $image"
buildah images "$image"
