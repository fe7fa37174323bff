"""Atomic output handling: write to a temporary sibling, then rename.

An interrupted run therefore leaves the previous result (or nothing) in place,
never a half-written checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator


class UniEraseError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits non-zero."""


def _write_atomic(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp)`` for a temporary sibling of ``path``, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` via a temporary file and rename."""
    text = json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n"
    write_text_atomic(path, text)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    _write_atomic(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def save_tensors_atomic(path: str | os.PathLike, tensors: dict) -> None:
    """Save ``tensors`` (name → tensor) as safetensors via a temporary file and rename."""
    from safetensors.torch import save_file

    _write_atomic(path, lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()}, tmp))


def check_output_dir(out: str | os.PathLike, overwrite: bool, *, allow_same_as: str | os.PathLike | None = None) -> Path:
    """Refuse to replace an existing, non-empty ``out`` unless ``overwrite`` is set.

    ``allow_same_as`` lets a sequential round write back into the checkpoint it was loaded from
    (the replacement is still atomic).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UniEraseError(f"output path {out} exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not overwrite:
        same = allow_same_as is not None and Path(allow_same_as).resolve() == out.resolve()
        if not same:
            raise UniEraseError(f"output directory {out} already exists and is not empty; pass --overwrite to replace it")
    return out


@contextlib.contextmanager
def atomic_directory(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory next to ``out``; on success it replaces ``out`` in one rename.

    On failure the temporary directory is removed and ``out`` is untouched.
    """
    out = Path(out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def default_cache_dir() -> Path:
    """Where converted models, trained tokens and key statistics are cached.

    ``$UNIERASE_CACHE`` wins; otherwise ``$XDG_CACHE_HOME/unierase`` or ``~/.cache/unierase``.
    """
    env = os.environ.get("UNIERASE_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "unierase"


def read_jsonl(path: str | os.PathLike, *, what: str = "file") -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line of a JSON-lines file.

    Errors name the file and line: a missing file, a malformed line, a line that is not an object.
    """
    path = Path(path)
    if not path.is_file():
        raise UniEraseError(f"{what} {path} not found")
    rows: list[tuple[int, dict]] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as err:
                raise UniEraseError(f"{path}:{number}: malformed JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(item, dict):
                raise UniEraseError(f"{path}:{number}: expected a JSON object, got {type(item).__name__}")
            rows.append((number, item))
    return rows
