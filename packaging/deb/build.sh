#!/usr/bin/env bash
# Build dist/nextmv-watcher_<version>_<arch>.deb for Debian 12 with dpkg-deb. The daemon goes into a
# self-contained virtual environment, /opt/nextmv-watcher, made by Debian's /usr/bin/python3 inside
# the rootfs of rootfs.sh (the interpreter on this machine may be another one: a venv links to the
# python that made it, and PyYAML's wheel is ABI-specific), so nothing is downloaded at install time.
# Usage: packaging/deb/build.sh [ROOTFS]; run as root from the repository (make deb).
set -euo pipefail
cd "$(dirname "$0")/../.."
rootfs=$(realpath -m "${1:-.cache/rootfs-bookworm}")
python=${PYTHON:-.venv/bin/python}
work=$PWD/build/deb
stage=$work/root

version=$("$python" -c 'import watcher; print(watcher.__version__)')
arch=$(dpkg --print-architecture)
rm -rf "$work" && mkdir -p "$work/wheel" "$stage/opt/nextmv-watcher"

# 1. The project's wheel; its dependencies are resolved in step 2, by Debian's python.
"$python" -m pip wheel --quiet --no-deps --wheel-dir "$work/wheel" .
# The versions the test suite ran with (.venv) pin the dependencies installed below.
"$python" -m pip freeze --exclude-editable | grep "==" > "$work/wheel/constraints.txt"

# 2. The venv, made at its final path in the rootfs (bind-mounted from the staging tree) and packed
# from there. --volatile=overlay leaves the cached rootfs unchanged; the host's CA bundle lets pip
# reach the package index through whatever proxy this machine uses. No host environment goes in.
packaging/deb/rootfs.sh "$rootfs"
SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 systemd-nspawn --quiet --register=no --keep-unit --volatile=overlay \
  --directory="$rootfs" --bind="$stage/opt/nextmv-watcher:/opt/nextmv-watcher" --bind-ro="$work/wheel:/mnt/wheel" \
  --bind-ro=/etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt \
  /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
  PIP_DISABLE_PIP_VERSION_CHECK=1 /bin/sh -euc '
    /usr/bin/python3 -m venv /opt/nextmv-watcher
    /opt/nextmv-watcher/bin/pip install --quiet --no-cache-dir --constraint /mnt/wheel/constraints.txt /mnt/wheel/*.whl
    # pip would let an admin change files dpkg owns; the package is upgraded as a whole instead
    /opt/nextmv-watcher/bin/python -m pip uninstall --quiet --yes pip setuptools'

# 3. Everything else, then the control files.
install -D -m 644 systemd/nextmv-watcher.service "$stage/lib/systemd/system/nextmv-watcher.service"
install -D -m 644 config.example.yaml "$stage/etc/nextmv-watcher/config.yaml"
install -d "$stage/usr/bin" && ln -s /opt/nextmv-watcher/bin/nextmv-watcher "$stage/usr/bin/nextmv-watcher"
doc=$stage/usr/share/doc/nextmv-watcher
install -D -m 644 README.md "$doc/README.md"
install -m 644 packaging/deb/copyright "$doc/copyright"
gzip -9n < CHANGELOG.md > "$doc/changelog.gz"
install -d "$stage/DEBIAN"
install -m 755 packaging/deb/postinst packaging/deb/prerm packaging/deb/postrm "$stage/DEBIAN/"
install -m 644 packaging/deb/conffiles "$stage/DEBIAN/"
(cd "$stage" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) \
  > "$stage/DEBIAN/md5sums"
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" packaging/deb/control.in \
  > "$stage/DEBIAN/control"
mkdir -p dist
dpkg-deb --root-owner-group -Zxz --build "$stage" "dist/nextmv-watcher_${version}_${arch}.deb"
