"""What a release carries: the wheel holds the example configuration and the systemd unit, and
`nextmv-watcher example config|unit` prints them byte for byte as the repository has them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from watcher import __version__
from watcher.cli import main

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
SOURCES = {"config": REPO / "config.example.yaml", "unit": REPO / "systemd" / "nextmv-watcher.service"}
# What building the wheel reads; everything else (.git, .venv, tests, bench, build output) stays out of the copy.
BUILD_INPUTS = ("pyproject.toml", "README.md", "LICENSE", "config.example.yaml", "systemd", "watcher")


def test_the_packaged_files_are_links_to_the_repository_s_sources() -> None:
    """One copy to edit: watcher/data/* point at the files the README, the tests and packaging use."""
    data = REPO / "watcher" / "data"
    for name, source in (("config.example.yaml", SOURCES["config"]), ("nextmv-watcher.service", SOURCES["unit"])):
        assert (data / name).is_symlink(), name
        assert (data / name).resolve() == source.resolve()


@pytest.mark.parametrize("what", ["config", "unit"])
def test_example_prints_the_file_byte_for_byte(what: str, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    assert main(["example", what]) == 0
    out = capsysbinary.readouterr()
    assert out.out == SOURCES[what].read_bytes()
    assert out.err == b""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of the checkout (symlinks kept as symlinks), as `pip wheel` builds it,
    with the setuptools of the environment (no build isolation, so nothing is downloaded)."""
    base = tmp_path_factory.mktemp("release")
    src = base / "src"
    src.mkdir()
    for name in BUILD_INPUTS:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(REPO / name, src / name)
    out = base / "dist"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", str(out), str(src)],
        capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    [built] = out.glob("*.whl")
    assert built.name == f"nextmv_watcher-{__version__}-py3-none-any.whl"
    return built


def test_the_wheel_carries_the_example_config_the_unit_and_the_license(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        assert zf.read("watcher/data/config.example.yaml") == SOURCES["config"].read_bytes()
        assert zf.read("watcher/data/nextmv-watcher.service") == SOURCES["unit"].read_bytes()
        dist_info = f"nextmv_watcher-{__version__}.dist-info"
        assert zf.read(f"{dist_info}/licenses/LICENSE") == (REPO / "LICENSE").read_bytes()
        metadata = zf.read(f"{dist_info}/METADATA").decode()
    assert "watcher/data/config.example.yaml" in names
    assert f"Version: {__version__}\n" in metadata
    assert "License-Expression: Apache-2.0\n" in metadata
    assert "Classifier: Environment :: No Input/Output (Daemon)\n" in metadata
    # A zip member that is a symlink would be unpacked as a tiny file naming its target.
    with zipfile.ZipFile(wheel) as zf:
        links = [i.filename for i in zf.infolist() if (i.external_attr >> 16) & 0o170000 == 0o120000]
    assert links == []


@pytest.mark.parametrize("what", ["config", "unit"])
def test_the_installed_wheel_prints_what_it_carries(wheel: Path, tmp_path: Path, what: str) -> None:
    """`nextmv-watcher example unit` from the wheel as installed (unpacked into site-packages, which is
    what installing a pure wheel does), run from elsewhere so that the checkout is not imported."""
    site = tmp_path / "site-packages"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    env = {**os.environ, "PYTHONPATH": str(site)}
    code = "import sys, watcher, watcher.cli; print(watcher.__file__, file=sys.stderr); sys.exit(watcher.cli.main())"
    proc = subprocess.run([sys.executable, "-P", "-c", code, "example", what], cwd=tmp_path, env=env,
                          capture_output=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.decode().strip() == str(site / "watcher" / "__init__.py")
    assert proc.stdout == SOURCES[what].read_bytes()
