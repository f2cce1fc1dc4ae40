"""The layout shows the architecture, and stays that way: which package may import which, who knows
httpx, who may import the CLI and the emulator, and no module over 400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import watcher

PACKAGE = Path(watcher.__file__).resolve().parent
TOP = {"watcher.config", "watcher.configfile", "watcher.configparse", "watcher.errors", "watcher.logs"}
MAX_LINES = 400


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its __init__)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(path: Path) -> set[str]:
    """The watcher modules `path` imports, anywhere in it (function-level imports included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("watcher"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("watcher"):
            # `from watcher.daemon import aftercare` imports watcher.daemon.aftercare.
            found.update(f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in MODULES
                         else node.module for alias in node.names)
    return found


MODULES = modules()


def world(name: str) -> str:
    """The part of the package a module belongs to: top, runfolder, cloud, daemon, cli, fakecloud,
    demo, main, root (watcher/__init__)."""
    if name in TOP:
        return "top"
    parts = name.split(".")
    if len(parts) == 1:
        return "root"
    return {"__main__": "main"}.get(parts[1], parts[1])


# Which worlds each world may import (besides itself and the package root, for __version__).
ALLOWED = {
    "top": {"top"},
    "runfolder": {"top"},
    "cloud": {"top", "runfolder"},
    "daemon": {"top", "runfolder", "cloud"},
    "fakecloud": set(),
    "cli": {"top", "runfolder", "cloud", "daemon", "fakecloud", "demo"},
    "demo": {"top", "runfolder", "cloud", "daemon", "fakecloud"},
    "main": {"cli"},
    "root": set(),
}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_point_inward(name: str) -> None:
    mine = world(name)
    bad = sorted(i for i in imports(MODULES[name])
                 if i != "watcher" and world(i) != mine and world(i) not in ALLOWED[mine])
    assert bad == [], f"{name} ({mine}) may not import {bad}"


def test_the_top_modules_import_only_each_other() -> None:
    for name in TOP:
        assert imports(MODULES[name]) <= TOP, name


def test_only_the_cloud_knows_httpx() -> None:
    knowing = sorted(n for n, p in MODULES.items() if "httpx" in {a.split(".")[0] for a in _all_imports(p)})
    assert [n for n in knowing if world(n) not in ("cloud", "fakecloud")] == []


def test_only_the_entry_point_imports_the_cli_and_only_cli_and_demo_the_emulator() -> None:
    cli_users = sorted(n for n, p in MODULES.items()
                       if world(n) != "cli" and any(world(i) == "cli" for i in imports(p)))
    assert cli_users == ["watcher.__main__"]
    emulator_users = sorted({world(n) for n, p in MODULES.items()
                             if world(n) != "fakecloud" and any(world(i) == "fakecloud" for i in imports(p))})
    assert emulator_users == ["cli", "demo"]


def test_no_module_is_over_400_lines() -> None:
    long = {n: len(p.read_text(encoding="utf-8").splitlines()) for n, p in MODULES.items()}
    assert {n: lines for n, lines in long.items() if lines > MAX_LINES} == {}


def test_every_module_is_on_the_readme_map() -> None:
    readme = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    missing = [str(p.relative_to(PACKAGE)) for p in MODULES.values()
               if p.name != "__init__.py" and p.parent.name != "fakecloud" and p.name not in readme]
    assert missing == []


def test_every_package_map_names_its_modules() -> None:
    for package in ("runfolder", "cloud", "daemon", "cli"):
        doc = (PACKAGE / package / "__init__.py").read_text(encoding="utf-8")
        names = sorted(p.name for p in (PACKAGE / package).glob("*.py") if p.name != "__init__.py")
        assert [n for n in names if n not in doc] == [], package


def _all_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found
