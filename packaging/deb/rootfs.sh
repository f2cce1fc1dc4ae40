#!/usr/bin/env bash
# Make sure a minimal Debian 12 tree is at $1 (default .cache/rootfs-bookworm): the one the package's
# virtual environment is built in (with Debian's /usr/bin/python3) and the one `make systemd-test`
# boots with systemd-nspawn. Built with debootstrap when missing (about a minute, ~300 MB), kept between
# runs; a failed download is retried once. Needs root and the debootstrap package.
set -euo pipefail
rootfs=${1:-.cache/rootfs-bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# procps: ExecReload=/bin/kill; python3-venv: the package's venv; the rest boots systemd.
include=systemd,systemd-sysv,dbus,procps,python3,python3-venv

if [ -e "$rootfs/.complete" ]; then exit 0; fi
rm -rf "$rootfs" "$rootfs.partial"
mkdir -p "$(dirname "$rootfs")"
for attempt in 1 2; do
  if debootstrap --variant=minbase --include="$include" bookworm "$rootfs.partial" "$mirror"; then break; fi
  rm -rf "$rootfs.partial"
  if [ "$attempt" = 2 ]; then echo "rootfs.sh: debootstrap failed twice" >&2; exit 1; fi
  echo "rootfs.sh: debootstrap failed, retrying once" >&2
done
mv "$rootfs.partial" "$rootfs"
touch "$rootfs/.complete"
