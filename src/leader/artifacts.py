"""Artifact directories: atomic writes, manifests, hashes.

Every artifact (DATA_DIR, TEACHER_DIR, MODEL_DIR, reports) is a directory with a
``manifest.json``. It is built in a hidden temporary sibling and renamed into place at the end,
so a crash never leaves a half-written directory that looks complete. The temporary names carry
the writer's process id (``.NAME.tmp-PID-*``, ``.NAME.old-PID``), so the next write to the same
place removes what a killed writer left behind, and never what a running one is writing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from leader import __version__
from leader.errors import LeaderError

MANIFEST = "manifest.json"


def package_version() -> str:

    return __version__


def library_versions() -> dict[str, str]:
    """Versions of the libraries whose behaviour shapes an artifact."""
    import importlib.metadata as md

    out = {"leader": package_version()}
    for name in ("torch", "polars", "numpy", "transformers", "peft", "safetensors"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_json(path: str | Path, obj: Any) -> None:
    Path(path).write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise LeaderError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LeaderError(f"{path}: not valid JSON ({e})") from None


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_manifest(directory: str | Path, kind: str, format_version: int, **fields: Any) -> dict:
    """Write ``manifest.json``: what the artifact is, which versions made it, and ``fields``."""
    manifest = {
        "kind": kind,
        "format_version": format_version,
        "created": now_iso(),
        "versions": library_versions(),
        **fields,
    }
    write_json(Path(directory) / MANIFEST, manifest)
    return manifest


def read_manifest(directory: str | Path, kind: str, max_format_version: int) -> dict:
    """Read and check a manifest; refuse another kind of artifact or a newer format."""
    directory = Path(directory)
    if not directory.is_dir():
        raise LeaderError(f"{directory}: directory not found")
    path = directory / MANIFEST
    if not path.is_file():
        raise LeaderError(f"{directory}: no {MANIFEST}; expected a {kind} directory")
    manifest = read_json(path)
    if not isinstance(manifest, dict) or manifest.get("kind") != kind:
        found = manifest.get("kind") if isinstance(manifest, dict) else None
        raise LeaderError(f"{path}: kind is {found!r}, expected {kind!r}")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > max_format_version:
        raise LeaderError(
            f"{path}: format_version {version!r} is not readable by leader "
            f"{package_version()} (reads up to {max_format_version}); upgrade leader"
        )
    return manifest


def check_can_write(final: str | Path, force: bool) -> Path:
    """Refuse to overwrite an existing non-empty directory unless ``force``.

    A symbolic link is followed: the artifact is written where it points, and the link stays.
    """
    final = Path(final)
    if final.is_symlink():
        target = Path(os.path.realpath(final))
        if not target.exists():
            raise LeaderError(f"{final}: a symbolic link to {target}, which does not exist")
        final = target
    if final.exists() and not final.is_dir():
        raise LeaderError(f"{final}: exists and is not a directory")
    if final.is_dir() and any(final.iterdir()) and not force:
        raise LeaderError(f"{final}: already exists and is not empty; use --force to replace it")
    return final


@contextlib.contextmanager
def atomic_dir(final: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``final`` only if the block succeeds.

    The old ``final`` (with ``force``) is removed only after the new one is complete.
    """
    final = check_can_write(final, force)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_leftovers(final)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{os.getpid()}-", dir=final.parent))
    except OSError as e:
        raise LeaderError(f"{final}: cannot write there ({e.strerror or e})") from None
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    try:
        if final.exists():
            final.rename(old)
        tmp.rename(final)
    except OSError as e:
        if old.exists() and not final.exists():
            old.rename(final)  # put the previous artifact back
        shutil.rmtree(tmp, ignore_errors=True)
        reason = e.strerror or e
        raise LeaderError(f"{final}: cannot move the new artifact into place ({reason})") from None
    shutil.rmtree(old, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_leftovers(final: Path) -> list[Path]:
    """Remove ``.NAME.tmp-PID-*`` / ``.NAME.old-PID`` siblings of ``final`` whose writer is dead."""
    return remove_dead_temps(final.parent, final.name)


def remove_dead_temps(directory: Path, name: str | None = None) -> list[Path]:
    """Remove the ``.X.tmp-PID*`` / ``.X.old-PID`` entries of ``directory`` whose writer is dead
    (only those of ``X == name`` when given): what a killed writer left behind. A file written in
    place by a resumable job (feature shards, a layer cache) is named this way too, so that the
    next run clears a killed run's half-written files without touching a live writer's."""
    stem = re.escape(name) if name is not None else r".+?"
    pattern = re.compile(rf"^\.{stem}\.(?:tmp|old)-(\d+)(?:-|$)")
    removed = []
    for path in directory.iterdir() if directory.is_dir() else []:
        m = pattern.match(path.name)
        if m and int(m.group(1)) != os.getpid() and not _alive(int(m.group(1))):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def temp_name(path: Path) -> Path:
    """Where to write ``path`` before renaming it into place (see :func:`remove_dead_temps`)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write a JSON file whole or not at all: beside it under :func:`temp_name`, then rename
    (a killed writer's temp is cleared by the next write of the same file)."""
    path = Path(path)
    remove_dead_temps(path.parent, path.name)
    tmp = temp_name(path)
    try:
        write_json(tmp, obj)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_tensors(tensors: dict, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file atomically, inside a :func:`temp_name` directory, then rename.

    ``safetensors.torch.save_file`` writes through a ``.tmpXXXXXX`` file of its own beside its
    target; a killed process leaves that file behind under a name that carries no writer, so
    nothing could tell it from a live write and clear it. Inside our PID-named directory it is
    cleared with the directory by :func:`remove_dead_temps`."""
    from safetensors.torch import save_file  # deferred on purpose: it imports torch

    path = Path(path)
    tmp = temp_name(path)
    tmp.mkdir(exist_ok=True)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / path.name),
                  metadata=metadata)
        os.replace(tmp / path.name, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
