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

import errno
import os
import stat
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from watcher.archive import archive_members, checked_stat, load_json
from watcher.config import FilesConfig, FormatConfig
from watcher.errors import FolderChanged, FolderError, InvalidFolder

IGNORED_PATTERNS = ("*.tmp", "*.part", "*~")
EXTRA_FILES = (("statistics", "statistics.json"), ("metrics", "metrics.json"), ("assets", "assets.json"))
STATUS_MAX_BYTES = 1024 * 1024
STATUSES = ("succeeded", "failed")
_ID_KEYS = ("instance_id", "batch_experiment_id")
_STRING_KEYS = ("error", "name", "description", *_ID_KEYS)
STATUS_KEYS = ("status", "duration", *_STRING_KEYS, "options")
FORMATS = ("auto", "json", "multi-file", "text")

Member = tuple[str, Path]
Fingerprint = dict[str, tuple[int, int, int]]


@dataclass(frozen=True)
class Artifact:
    """One file or directory of a run folder and how it is uploaded.

    `format`: input/output "json" | "multi-file" | "text"; logs "text"; metrics/statistics/assets
    "json". `members` holds the validated `(arcname, path)` list found by `inspect_folder`.
    """

    role: str
    path: Path
    is_dir: bool
    format: str
    members: tuple[Member, ...] = field(default=(), compare=False, repr=False)

    def named_members(self) -> list[Member]:
        """`(arcname, path)` of every file that makes up the artifact, sorted (see `archive_members`)."""
        if self.members:
            return list(self.members)
        if self.is_dir:  # an Artifact built by hand, not by inspect_folder: walk it now
            return archive_members(self.path, True)
        return [(self.path.name, self.path)]

    def member_paths(self) -> list[Path]:
        """The file itself, or every regular file under the directory, sorted by relative path."""
        return [path for _, path in self.named_members()]


@dataclass(frozen=True)
class RunFolder:
    """A validated run folder; `artifacts` in the order input, output, logs, statistics, metrics, assets."""

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

    def artifact(self, role: str) -> Artifact | None:
        """The artifact playing `role`, if present."""
        return next((a for a in self.artifacts if a.role == role), None)


def reserved_names(files: FilesConfig) -> frozenset[str]:
    """Root entries with a fixed meaning, never candidates for input, output or logs."""
    return frozenset({files.status, *(name for _, name in EXTRA_FILES)})


def find_candidates(
    path: Path, names: tuple[str, ...], *, marker: str | None, exclude: Collection[str] = ()
) -> list[str]:
    """The entries of the folder root that match one of `names` (a role's configured names).

    In: the run folder, the role's names ('/'-suffixed: a directory; globs allowed), the completion
    marker and further names to leave out. Out: sorted entry names, directories with a trailing '/'.
    A symlink counts as what it points to. Ignored: dotfiles, `IGNORED_PATTERNS`, the marker, `exclude`.
    Raises: `OSError` from listing the folder or examining an entry (FileNotFoundError when the folder
    vanished, PermissionError); a broken symlink is not an error.
    """
    found: set[str] = set()
    with os.scandir(path) as it:
        for entry in it:
            name = entry.name
            if _ignored(name, marker) or name in exclude:
                continue
            try:
                is_dir = stat.S_ISDIR(entry.stat().st_mode)
            except OSError as e:
                if e.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                    raise
                is_dir = False  # a broken symlink: a file candidate, refused later by name
            for pattern in names:
                if pattern.endswith("/"):
                    if is_dir and fnmatchcase(name, pattern[:-1]):
                        found.add(name + "/")
                        break
                elif not is_dir and fnmatchcase(name, pattern):
                    found.add(name)
                    break
    return sorted(found)


def inspect_folder(
    path: Path, files: FilesConfig, formats: FormatConfig, marker: str | None = None
) -> RunFolder:
    """Validate the run folder `path` against the contract and describe it.

    In: the folder, the watched path's file names and formats, the completion marker (never a
    candidate). Reads status.json and the small metrics/statistics/assets files; walks input/output
    directories (stat only); never reads input or output content.
    Out: a `RunFolder`.
    Raises: `InvalidFolder(str(path), problem)` for every contract breach (ambiguous or missing
    input, invalid status.json, succeeded without output, bad symlinks, FIFOs, permission denied,
    invalid JSON in metrics/statistics/assets, a directory where a format needs a file);
    `FolderChanged` when the folder or one of its files vanished while inspected.
    """
    folder = str(path)
    with _translate(path, "inspection"):
        try:
            if not stat.S_ISDIR(path.stat().st_mode):
                raise FolderChanged(folder, "run folder is no longer a directory")
        except FileNotFoundError:
            raise FolderChanged(folder, "run folder vanished") from None
        root_real = os.path.realpath(path)
        exclude = reserved_names(files)
        chosen: dict[str, str] = {}
        for role in ("input", "output", "logs"):
            candidates = find_candidates(path, getattr(files, role), marker=marker, exclude=exclude)
            if len(candidates) > 1:
                raise InvalidFolder(folder, f"ambiguous {role}: {', '.join(candidates)}")
            if candidates:
                clash = next((r for r, n in chosen.items() if n == candidates[0]), None)
                if clash:
                    raise InvalidFolder(folder, f"{candidates[0]} matches both {clash} and {role}")
                chosen[role] = candidates[0]
        if "input" not in chosen:
            raise InvalidFolder(folder, f"no input (expected one of: {', '.join(files.input)})")
        status_file = path / files.status
        has_status = os.path.lexists(status_file)
        settings = _read_status(status_file, folder, root_real) if has_status else {}

        artifacts: list[Artifact] = []
        for role in ("input", "output"):
            if role in chosen:
                fmt = getattr(formats, role)
                artifacts.append(_content_artifact(path, root_real, role, chosen[role], fmt))
        if "logs" in chosen:
            artifacts.append(_logs_artifact(path, root_real, chosen["logs"]))
        for role, name in EXTRA_FILES:
            if os.path.lexists(path / name):
                artifacts.append(_json_artifact(path, root_real, role, name))

    status = _decide_status(settings, has_output="output" in chosen, folder=folder)
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
        status_file=status_file if has_status else None,
    )


def fingerprint(folder: RunFolder) -> Fingerprint:
    """Size, mtime_ns and inode of every member of every artifact, plus status.json.

    Keys are paths relative to the run folder ('input/a/b.csv', 'output.json'); symlinks inside the
    folder are followed. Raises: `FolderChanged` when a member vanished, `InvalidFolder` when it
    cannot be examined (permission denied).
    """
    result: Fingerprint = {}
    with _translate(folder.path, "fingerprinting"):
        for rel, path in _files(folder, current=False):
            st = path.stat()
            result[rel] = (st.st_size, st.st_mtime_ns, st.st_ino)
    return result


def verify_fingerprint(folder: RunFolder, before: Fingerprint) -> None:
    """Check that the folder still matches `before` (from `fingerprint`), re-walking directories.

    Raises: `FolderChanged("<rel> changed during upload")` for a member whose size, mtime or inode
    differs, "<rel> vanished during upload" for a missing one, "<rel> appeared during upload" for a
    new file in an input/output directory; also when a directory no longer passes validation.
    """
    where = str(folder.path)
    now: Fingerprint = {}
    try:
        with _translate(folder.path, "verification"):
            for rel, path in _files(folder, current=True):
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue
                now[rel] = (st.st_size, st.st_mtime_ns, st.st_ino)
    except InvalidFolder as e:
        raise FolderChanged(where, f"changed during upload: {e.problem}") from None
    for rel in before:
        if rel not in now:
            raise FolderChanged(where, f"{rel} vanished during upload")
        if now[rel] != before[rel]:
            raise FolderChanged(where, f"{rel} changed during upload")
    appeared = sorted(set(now) - set(before))
    if appeared:
        raise FolderChanged(where, f"{appeared[0]} appeared during upload")


def _files(folder: RunFolder, *, current: bool) -> Iterator[tuple[str, Path]]:
    """(relative path, path) of every file that is uploaded; `current` re-walks directories now."""
    for artifact in folder.artifacts:
        if not artifact.is_dir:
            yield artifact.path.name, artifact.path
            continue
        try:
            members = (archive_members(artifact.path, True, root=folder.path) if current
                       else artifact.named_members())
        except FileNotFoundError:
            if not current:
                raise
            members = []
        for arcname, path in members:
            yield f"{artifact.path.name}/{arcname}", path
    if folder.status_file is not None:
        yield folder.status_file.name, folder.status_file


def _content_artifact(root: Path, root_real: str, role: str, entry: str, fmt: str) -> Artifact:
    folder = str(root)
    name = entry.rstrip("/")
    path = root / name
    st = checked_stat(str(path), entry, folder=folder, root_real=root_real)
    is_dir = stat.S_ISDIR(st.st_mode)
    if fmt == "auto":
        fmt = "multi-file" if is_dir or not name.lower().endswith(".json") else "json"
    elif fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}")
    if is_dir and fmt != "multi-file":
        raise InvalidFolder(folder, f"format {fmt} needs a single file, {entry} is a directory")
    members = archive_members(path, is_dir, root=root) if fmt == "multi-file" else [(name, path)]
    return Artifact(role=role, path=path, is_dir=is_dir, format=fmt, members=tuple(members))


def _logs_artifact(root: Path, root_real: str, entry: str) -> Artifact:
    path = root / entry.rstrip("/")
    st = checked_stat(str(path), entry, folder=str(root), root_real=root_real)
    if stat.S_ISDIR(st.st_mode):
        raise InvalidFolder(str(root), f"logs: {entry} is a directory, expected a file")
    return Artifact(role="logs", path=path, is_dir=False, format="text", members=((path.name, path),))


def _json_artifact(root: Path, root_real: str, role: str, name: str) -> Artifact:
    folder = str(root)
    path = root / name
    st = checked_stat(str(path), name, folder=folder, root_real=root_real)
    if stat.S_ISDIR(st.st_mode):
        raise InvalidFolder(folder, f"{name}: is a directory, expected a JSON file")
    content = load_json(path, folder=folder)
    if role == "metrics" and not isinstance(content, dict):
        raise InvalidFolder(folder, f"{name}: must be a JSON object")
    return Artifact(role=role, path=path, is_dir=False, format="json", members=((name, path),))


def _read_status(path: Path, folder: str, root_real: str) -> dict[str, Any]:
    """Parse and validate status.json; every problem is reported at once, each naming its key."""
    name = path.name
    st = checked_stat(str(path), name, folder=folder, root_real=root_real)
    if stat.S_ISDIR(st.st_mode):
        raise InvalidFolder(folder, f"{name}: is a directory, expected a JSON file")
    if st.st_size > STATUS_MAX_BYTES:
        raise InvalidFolder(folder, f"{name}: bigger than 1 MiB ({st.st_size} bytes)")
    raw = load_json(path, folder=folder, max_bytes=STATUS_MAX_BYTES)
    if not isinstance(raw, dict):
        raise InvalidFolder(folder, f"{name}: must be a JSON object, got {_json_type(raw)}")
    problems = _status_problems(raw)
    if problems:
        raise InvalidFolder(folder, f"{name}: {'; '.join(problems)}")
    return raw


def _status_problems(raw: dict[str, Any]) -> list[str]:
    known = ", ".join(STATUS_KEYS)
    problems = [f'unknown key "{key}" (known: {known})' for key in raw if key not in STATUS_KEYS]
    if "status" in raw and raw["status"] not in STATUSES:
        problems.append('"status" must be "succeeded" or "failed"')
    duration = raw.get("duration", 0)
    if not isinstance(duration, int) or isinstance(duration, bool):
        problems.append('"duration" must be an integer number of milliseconds')
    elif duration < 0:
        problems.append('"duration" must be an integer number of milliseconds, not negative')
    for key in _STRING_KEYS:
        if key in raw and not isinstance(raw[key], str):
            problems.append(f'"{key}" must be a string')
        elif key in _ID_KEYS and raw.get(key) == "":
            problems.append(f'"{key}" must not be empty')
    options = raw.get("options", {})
    if not isinstance(options, dict):
        problems.append('"options" must be an object of strings to strings')
    else:
        problems += [f'"options.{k}" must be a string' for k, v in options.items() if not isinstance(v, str)]
    if "error" in raw and raw.get("status") == "succeeded":
        problems.append('"error" is only allowed when "status" is "failed"')
    return problems


def _decide_status(settings: dict[str, Any], *, has_output: bool, folder: str) -> str:
    """status.json's status, else failed with an error, else succeeded iff an output exists."""
    status: str = settings.get("status") or (
        "failed" if "error" in settings else "succeeded" if has_output else "failed"
    )
    if status == "succeeded" and not has_output:
        raise InvalidFolder(folder, "status succeeded but no output")
    return status


def _ignored(name: str, marker: str | None) -> bool:
    return name.startswith(".") or name == marker or any(fnmatchcase(name, p) for p in IGNORED_PATTERNS)


def _decoded(name: str) -> str:
    """A file name as text the API can take: bytes that are not UTF-8 become U+FFFD."""
    return os.fsencode(name).decode("utf-8", "replace")


def _json_type(value: object) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


@contextmanager
def _translate(root: Path, during: str) -> Iterator[None]:
    """`OSError` while examining the folder: vanished -> FolderChanged, EACCES -> InvalidFolder."""
    folder = str(root)
    try:
        yield
    except FolderError:
        raise
    except FileNotFoundError as e:
        raise FolderChanged(folder, f"{_rel(root, e.filename)} vanished during {during}") from None
    except PermissionError as e:
        raise InvalidFolder(folder, f"{_rel(root, e.filename)}: permission denied") from None
    except NotADirectoryError as e:
        raise FolderChanged(folder, f"{_rel(root, e.filename)} changed during {during}") from None
    except OSError as e:
        raise FolderChanged(folder, f"{_rel(root, e.filename)}: {e.strerror or e}") from e


def _rel(root: Path, filename: object) -> str:
    """`filename` (from an OSError) relative to the run folder, for messages."""
    if not isinstance(filename, (str, bytes, os.PathLike)):
        return "a file"
    name = Path(os.fsdecode(filename))
    try:
        rel = name.relative_to(root)
    except ValueError:
        return name.name or str(name)
    return "run folder" if rel == Path() else rel.as_posix()
