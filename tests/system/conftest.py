"""The system tier: the Debian package under a real systemd, in a container booted once per session.

Run by `make systemd-test` (root, systemd-nspawn, debootstrap), which builds the package and sets
NEXTMV_SYSTEMD_ROOTFS; without that variable every test here is skipped, saying so. The session's
container has the package installed, the emulator running as a transient unit
(`nextmv-watcher fake-cloud` from the package's own venv, knowing only the application `app-1`),
the API key where the unit's LoadCredential= reads it, and an admin's drop-in listing /srv/nextmv in
ReadWritePaths=. It is powered off at the end, whatever happened; its console and its whole journal
are then in build/systemd-test/.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import wait_for
from nspawn import Container
from systemd_helpers import API_KEY, CLOUD_PORT, EXIT_LINE, KNOWN_APP, cloud

import watcher

REPO = Path(__file__).resolve().parents[2]
OUTPUT = REPO / "build" / "systemd-test"   # the container's console and its whole journal, kept for a look

# What an admin adds with `systemctl edit nextmv-watcher`: the parent of the watched paths is writable
# (the README's advice), so that a watched path added later by a reload is writable too.
ADMIN_DROP_IN = """\
[Unit]
RequiresMountsFor=/srv/nextmv
[Service]
ReadWritePaths=-/srv/nextmv
"""
# For the tests: after each run of the daemon, how its main process ended ($EXIT_CODE: exited, killed
# or dumped; $EXIT_STATUS: the code or the signal), since `systemctl show` forgets it once the unit is
# inactive. "+": outside the sandbox, as root.
TEST_DROP_IN = f"""\
[Service]
ExecStopPost=+/bin/echo {EXIT_LINE} ${{EXIT_CODE}} ${{EXIT_STATUS}}
"""


@pytest.fixture(scope="session")
def container() -> Iterator[Container]:
    rootfs = os.environ["NEXTMV_SYSTEMD_ROOTFS"]   # test_systemd.py is skipped without it
    debs = sorted((REPO / "dist").glob(f"nextmv-watcher_{watcher.__version__}_*.deb"))
    assert len(debs) == 1, f"expected one package for version {watcher.__version__} in dist/ (make deb): {debs}"
    assert (Path(rootfs) / ".complete").exists(), f"no rootfs at {rootfs} (packaging/deb/rootfs.sh makes it)"
    OUTPUT.mkdir(parents=True, exist_ok=True)
    box = Container(Path(rootfs).resolve(), f"nmw-test-{os.getpid()}", OUTPUT / "console.log",
                    {debs[0].parent: "/mnt/dist"})
    try:
        box.boot()
        box.run("apt-get", "install", "--yes", "--quiet", f"/mnt/dist/{debs[0].name}", timeout=180)
        box.run("systemd-run", "--unit=fake-cloud", "/opt/nextmv-watcher/bin/nextmv-watcher", "fake-cloud",
                "--port", str(CLOUD_PORT), "--api-key", API_KEY, "--application", KNOWN_APP)
        box.sh("install -d -o nextmv-watcher -g nextmv-watcher /srv/nextmv /srv/nextmv/runs")
        box.write("/etc/nextmv-watcher/api-key", API_KEY + "\n", mode="600")
        box.write("/etc/systemd/system/nextmv-watcher.service.d/admin.conf", ADMIN_DROP_IN)
        box.write("/etc/systemd/system/nextmv-watcher.service.d/test-exit.conf", TEST_DROP_IN)
        box.run("systemctl", "daemon-reload")
        wait_for(lambda: cloud(box, "stats", check=False) is not None, 30, "the emulator to listen", interval=0.2)
        yield box
    finally:
        if box.pid:
            journal = box.run("journalctl", "--output=short-precise", "--no-pager", check=False)
            (OUTPUT / "journal.txt").write_text(journal.out + journal.err)
        box.poweroff()
