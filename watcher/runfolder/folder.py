"""What a run folder holds: its artifacts, its status, its formats; validated before any upload.

A run folder is a direct child directory of a watched path. Its root holds:
- input (required): one of `FilesConfig.input` (by default `input.json`, any `input.*`, an `input/`
  directory); output (`FilesConfig.output`, required for a succeeded run); logs (`FilesConfig.logs`);
- `FilesConfig.status` (`status.json`): optional JSON object, see `STATUS_KEYS`;
- `statistics.json`, `metrics.json`, `assets.json`: optional, fixed names.
A configured name ending in '/' is a directory; '*' and '?' are globs against root entries. Two
candidates for one role make the folder invalid. Dotfiles (the daemon's `.nextmv-*` files among
them), `*.tmp`, `*.part`, `*~`, the completion marker, the status file and the fixed-name files are
never candidates.

`inspect_folder` validates everything that can be validated without uploading, so that an invalid
folder is refused before any byte leaves; `fingerprint`/`verify_fingerprint` detect a folder that
changed while it was being uploaded.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from watcher.config import FORMATS, FilesConfig, FormatConfig
from watcher.errors import FolderChanged, FolderError, InvalidFolder
from watcher.runfolder.dirhandle import Listing, kind, translate_oserror
from watcher.runfolder.rundir import Ident, Limits, RunDir
from watcher.runfolder.runjson import STATUS_MAX_BYTES, Turn, decide_status, json_turn, parse_json, parse_status

IGNORED_PATTERNS = ("*.tmp", "*.part", "*~")
EXTRA_FILES = (("statistics", "statistics.json"), ("metrics", "metrics.json"), ("assets", "assets.json"))

Fingerprint = dict[str, tuple[int, int, int]]


@dataclass(frozen=True)
class Member:
    """One file of an artifact: its name in the archive, where it is inside the run folder (symlinks
    resolved: the path to open), and what it was when inspected."""

    arcname: str
    rel: str
    ident: Ident


@dataclass(frozen=True)
class Artifact:
    """One file or directory of a run folder and how it is uploaded.

    `format`: input/output "json" | "multi-file" | "text"; logs "text"; metrics/statistics/assets
    "json". `members` holds the inspected files (one for a file artifact).
    """

    role: str
    path: Path
    is_dir: bool
    format: str
    members: tuple[Member, ...] = field(default=(), compare=False, repr=False)
    wrap: str | None = field(default=None, compare=False)   # statistics/assets: the key to wrap it under

    def named_members(self) -> list[tuple[str, Path]]:
        """`(arcname, path)` of every file that makes up the artifact, sorted by arcname."""
        if not self.is_dir:
            return [(self.path.name, self.path)]
        return [(m.arcname, self.path / m.arcname) for m in self.members]

    def member_paths(self) -> list[Path]:
        """The file itself, or every regular file under the directory, sorted by relative path."""
        return [path for _, path in self.named_members()]

    @property
    def size(self) -> int:
        """Bytes of a file artifact as inspected."""
        return self.members[0].ident.size


@dataclass(frozen=True)
class RunFolder:
    """A validated run folder; `artifacts` in the order input, output, logs, statistics, metrics, assets.

    `dir` is the open folder every later read goes through (see `watcher.runfolder.rundir`)."""

    path: Path
    name: str
    description: str | None
    status: str
    duration_ms: int | None
    error_message: str | None
    instance_id: str | None
    batch_experiment_id: str | None
    options: dict[str, str] = field(hash=False)
    artifacts: tuple[Artifact, ...]
    status_file: Path | None = None
    status_member: Member | None = field(default=None, compare=False, repr=False)
    dir: RunDir | None = field(default=None, compare=False, repr=False)
    limits: Limits = field(default=Limits(), compare=False, repr=False)   # the caps it was inspected with

    def artifact(self, role: str) -> Artifact | None:
        """The artifact playing `role`, if present."""
        return next((a for a in self.artifacts if a.role == role), None)

    @property
    def handle(self) -> RunDir:
        assert self.dir is not None, "a RunFolder made by inspect_folder has its folder open"
        return self.dir


def reserved_names(files: FilesConfig) -> frozenset[str]:
    """Root entries with a fixed meaning, never candidates for input, output or logs."""
    return frozenset({files.status, *(name for _, name in EXTRA_FILES)})


def find_candidates(
    folder: RunDir, listing: Listing, names: tuple[str, ...], *, marker: str | None, exclude: Collection[str] = ()
) -> list[str]:
    """The entries of the folder root that match one of `names` (a role's configured names).

    In: the open run folder, its root's entries listed once for every role (`RunDir.entries`: one
    snapshot, one listing), the role's names ('/'-suffixed: a directory; globs allowed), the
    completion marker and further names to leave out. Out: sorted entry names, directories with a
    trailing '/'. A symlink counts as what it resolves to inside the folder (resolved by us, see
    `RunDir.resolve`). Ignored: dotfiles, `IGNORED_PATTERNS`, the marker, `exclude`.
    Raises: `OSError` from listing the folder (PermissionError); a broken or escaping symlink is not
    an error here (a file candidate, refused later by name).
    """
    found: set[str] = set()
    for name, lst in listing:
        if _ignored(name, marker) or name in exclude:
            continue
        is_dir = stat.S_ISDIR(lst.st_mode)
        if stat.S_ISLNK(lst.st_mode):
            is_dir = _link_is_dir(folder, name)
        for pattern in names:
            if pattern.endswith("/"):
                if is_dir and fnmatchcase(name, pattern[:-1]):
                    found.add(name + "/")
                    break
            elif not is_dir and fnmatchcase(name, pattern):
                found.add(name)
                break
    return sorted(found)


def _link_is_dir(folder: RunDir, name: str) -> bool:
    """Whether the symlink `name` stands for a directory, for choosing candidates only (whatever it is
    gets refused later, by name, if it leaves the folder or is broken)."""
    try:
        return stat.S_ISDIR(folder.resolve(name)[1].st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except (FolderError, OSError):
        # Leaving the folder (or a loop): only its type is looked at, so that `input -> /elsewhere`
        # is reported as the input directory it claims to be; nothing is opened.
        try:
            return stat.S_ISDIR(os.stat(name, dir_fd=folder.fileno()).st_mode)
        except OSError:
            return False


def inspect_folder(
    folder: RunDir | Path, files: FilesConfig, formats: FormatConfig, marker: str | None = None,
    turn: Turn = json_turn,
) -> RunFolder:
    """Validate the run folder against the contract and describe it.

    In: the open folder (or its path, opened here), the watched path's file names, formats and caps,
    the completion marker (never a candidate), the turn big JSON documents take (`runjson`). Reads
    status.json and the small metrics/statistics/assets files (bounded by their caps); walks input/output
    directories (lstat only, bounded by `files.max_archive_files`/`max_archive_depth`); never reads
    input or output content.
    Out: a `RunFolder` holding the open folder and what every member was when inspected.
    Raises: `InvalidFolder(str(path), problem)` for every contract breach (ambiguous or missing
    input, invalid status.json, succeeded without output, bad symlinks, FIFOs, permission denied,
    invalid or oversized metrics/statistics/assets, a directory where a format needs a file, an
    archive over its caps); `FolderChanged` when the folder or one of its files vanished.
    """
    d = folder if isinstance(folder, RunDir) else RunDir.open(folder)
    path = d.path
    with translate_oserror(path, "inspection"):
        exclude = reserved_names(files)
        chosen: dict[str, str] = {}
        listing = d.entries()   # one snapshot of the folder's root for every role
        for role in ("input", "output", "logs"):
            candidates = find_candidates(d, listing, getattr(files, role), marker=marker, exclude=exclude)
            if len(candidates) > 1:
                raise InvalidFolder(d.label, f"ambiguous {role}: {', '.join(candidates)}")
            if candidates:
                clash = next((r for r, n in chosen.items() if n == candidates[0]), None)
                if clash:
                    raise InvalidFolder(d.label, f"{candidates[0]} matches both {clash} and {role}")
                chosen[role] = candidates[0]
        if "input" not in chosen:
            raise InvalidFolder(d.label, f"no input (expected one of: {', '.join(files.input)})")
        status_member: Member | None = None
        settings: dict[str, Any] = {}
        present = {name for name, _ in listing}
        if files.status in present:   # a plain name (the configuration refuses a '/')
            status_member, settings = _read_status(d, files.status)

        limits = Limits(max_files=files.max_archive_files, max_depth=files.max_archive_depth)
        artifacts: list[Artifact] = []
        for role in ("input", "output"):
            if role in chosen:
                artifacts.append(_content_artifact(d, role, chosen[role], getattr(formats, role), limits))
        if "logs" in chosen:
            artifacts.append(_logs_artifact(d, chosen["logs"]))
        for role, name in EXTRA_FILES:
            if name in present:
                artifacts.append(_json_artifact(d, role, name, files.max_json_bytes, turn))

    status = decide_status(settings, has_output="output" in chosen, folder=d.label)
    return RunFolder(
        path=path,
        name=settings.get("name") or _decoded(path.name),
        description=settings.get("description"),
        status=status,
        duration_ms=settings.get("duration"),
        error_message=settings.get("error"),
        instance_id=settings.get("instance_id"),
        batch_experiment_id=settings.get("batch_experiment_id"),
        options=dict(settings.get("options", {})),
        artifacts=tuple(artifacts),
        status_file=path / files.status if status_member is not None else None,
        status_member=status_member,
        dir=d,
        limits=limits,
    )


def fingerprint(folder: RunFolder) -> Fingerprint:
    """Size, mtime_ns and inode of every member of every artifact, plus status.json, as inspected.

    Keys are paths relative to the run folder ('input/a/b.csv', 'output.json')."""
    return dict(_members(folder))


def verify_fingerprint(folder: RunFolder, before: Fingerprint) -> None:
    """Check that the folder still matches `before` (from `fingerprint`), re-walking directories.

    Raises: `FolderChanged("<rel> changed during upload")` for a member whose size, mtime or inode
    differs, "<rel> vanished during upload" for a missing one, "<rel> appeared during upload" for a
    new file in an input/output directory; also when a directory no longer passes validation.
    """
    problem = fingerprint_changes(folder, before, "during upload")
    if problem is not None:
        raise FolderChanged(str(folder.path), problem)


def fingerprint_changes(folder: RunFolder, before: Fingerprint, when: str) -> str | None:
    """What differs now from `before` (see `verify_fingerprint`), e.g. "output.json changed <when>", or
    None. Raises `FolderChanged`/`OSError` only when the folder itself cannot be read."""
    now: Fingerprint = {}
    try:
        with translate_oserror(folder.path, "verification"):
            for rel, ident in _current(folder, folder.handle):
                now[rel] = ident
    except InvalidFolder as e:
        return f"changed {when}: {e.problem}"
    for rel in before:
        if rel not in now:
            return f"{rel} vanished {when}"
        if now[rel] != before[rel]:
            return f"{rel} changed {when}"
    appeared = sorted(set(now) - set(before))
    return f"{appeared[0]} appeared {when}" if appeared else None


def _members(folder: RunFolder) -> Iterator[tuple[str, tuple[int, int, int]]]:
    for artifact in folder.artifacts:
        for m in artifact.members:
            key = f"{artifact.path.name}/{m.arcname}" if artifact.is_dir else artifact.path.name
            yield key, m.ident.fingerprint()
    if folder.status_member is not None and folder.status_file is not None:
        yield folder.status_file.name, folder.status_member.ident.fingerprint()


def _current(folder: RunFolder, d: RunDir) -> Iterator[tuple[str, tuple[int, int, int]]]:
    """What `_members` gives, looked at again now; a vanished member is left out."""
    names = [a.path.name for a in folder.artifacts if not a.is_dir]
    if folder.status_file is not None:
        names.append(folder.status_file.name)
    for artifact in folder.artifacts:
        if artifact.is_dir:
            try:
                walked = d.walk(artifact.path.name, folder.limits)
            except (FileNotFoundError, NotADirectoryError):
                continue
            for arcname, _, st in walked:
                yield f"{artifact.path.name}/{arcname}", Ident.of(st).fingerprint()
    for name in names:
        try:
            _, st = d.resolve(name)
        except (FileNotFoundError, NotADirectoryError):
            continue
        yield name, Ident.of(st).fingerprint()


def _entry(d: RunDir, name: str, label: str) -> tuple[str, os.stat_result]:
    """A root entry of the folder as the contract wants it: resolved inside the folder, a regular
    file or a directory. Never opens anything (a FIFO would block)."""
    real, st = d.resolve(name, label)
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise InvalidFolder(d.label, f"{label}: not a regular file or directory ({kind(st.st_mode)})")
    return real, st


def _content_artifact(d: RunDir, role: str, entry: str, fmt: str, limits: Limits) -> Artifact:
    name = entry.rstrip("/")
    real, st = _entry(d, name, entry)
    is_dir = stat.S_ISDIR(st.st_mode)
    if fmt == "auto":
        fmt = "multi-file" if is_dir or not name.lower().endswith(".json") else "json"
    elif fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}")
    if is_dir and fmt != "multi-file":
        raise InvalidFolder(d.label, f"format {fmt} needs a single file, {entry} is a directory")
    if is_dir:
        members = tuple(Member(arcname, rel, Ident.of(mst)) for arcname, rel, mst in d.walk(name, limits))
        for m in members:
            check_name(m.arcname, d.label, f"{name}/{m.arcname}")
    else:
        if fmt == "multi-file":
            check_name(name, d.label, name)
        members = (Member(name, real, Ident.of(st)),)
    return Artifact(role=role, path=d.path / name, is_dir=is_dir, format=fmt, members=members)


def _logs_artifact(d: RunDir, entry: str) -> Artifact:
    name = entry.rstrip("/")
    real, st = _entry(d, name, entry)
    if stat.S_ISDIR(st.st_mode):
        raise InvalidFolder(d.label, f"logs: {entry} is a directory, expected a file")
    return Artifact(role="logs", path=d.path / name, is_dir=False, format="text",
                    members=(Member(name, real, Ident.of(st)),))


def _json_artifact(d: RunDir, role: str, name: str, cap: int, turn: Turn) -> Artifact:
    real, st = _entry(d, name, name)
    if stat.S_ISDIR(st.st_mode):
        raise InvalidFolder(d.label, f"{name}: is a directory, expected a JSON file")
    if st.st_size > cap:
        raise InvalidFolder(d.label, f"{name}: {st.st_size} bytes, over the {cap}-byte cap (files.max_json_bytes)")
    member = Member(name, real, Ident.of(st))
    with turn(st.st_size):
        content = parse_json(read_member(d, member), name, d.label)
        is_object = isinstance(content, dict)
        keyed = isinstance(content, dict) and role in content
        del content   # a document at the cap parses to hundreds of MB: let it go before the next turn
    if role == "metrics" and not is_object:
        raise InvalidFolder(d.label, f"{name}: must be a JSON object")
    wrap = role if role in ("statistics", "assets") and not keyed else None
    return Artifact(role=role, path=d.path / name, is_dir=False, format="json", members=(member,), wrap=wrap)


def read_member(d: RunDir, member: Member) -> bytes:
    """The bytes of a small inspected file (status, metrics, statistics, assets)."""
    with translate_oserror(d.path, "reading"):
        return d.read_file(member.rel, member.ident)


def _read_status(d: RunDir, name: str) -> tuple[Member, dict[str, Any]]:
    """Parse and validate status.json; every problem is reported at once, each naming its key."""
    real, st = _entry(d, name, name)
    if stat.S_ISDIR(st.st_mode):
        raise InvalidFolder(d.label, f"{name}: is a directory, expected a JSON file")
    if st.st_size > STATUS_MAX_BYTES:
        raise InvalidFolder(d.label, f"{name}: bigger than 1 MiB ({st.st_size} bytes)")
    member = Member(name, real, Ident.of(st))
    return member, parse_status(read_member(d, member), name, d.label)


def check_name(arcname: str, folder: str, rel: str) -> None:
    """An archive member's name must be UTF-8 (tar's pax names are); else the folder is invalid."""
    try:
        arcname.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidFolder(folder, f"{rel!r}: file name is not valid UTF-8") from None


def _ignored(name: str, marker: str | None) -> bool:
    return name.startswith(".") or name == marker or any(fnmatchcase(name, p) for p in IGNORED_PATTERNS)


def _decoded(name: str) -> str:
    """A file name as text the API can take: bytes that are not UTF-8 become U+FFFD."""
    return os.fsencode(name).decode("utf-8", "replace")
