"""Atomic output handling: write to a temporary sibling, then rename.

An interrupted run therefore leaves the previous result (or nothing) in place,
never a half-written checkpoint.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator


class UniEraseError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits non-zero."""


def fault_point(name: str) -> None:
    """Kill this process here when ``$UNIERASE_TEST_KILL_AT`` names this point.

    Only the fault-injection tests set it: they start a writer in a subprocess and check that a
    kill at each point of a save leaves the previous output (and its ledger) intact.
    """
    wanted = os.environ.get("UNIERASE_TEST_KILL_AT")
    if wanted in (name, f"{name}@rank{os.environ.get('RANK', '0')}"):  # "point@rankN": one process of several
        os.kill(os.getpid(), signal.SIGKILL)


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file, or a directory entry, to disk."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if Path(path).is_dir() else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a directory
        pass
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike) -> None:
    """fsync every file and folder under ``root`` (before it is renamed into place)."""
    for folder, _dirs, files in os.walk(root):
        for name in files:
            fsync_path(os.path.join(folder, name))
        fsync_path(folder)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_atomic(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp)`` for a temporary sibling of ``path``, fsync it, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would make every output private
        write(tmp)
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
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


def _protected_roots(cache_dir: str | os.PathLike | None) -> list[Path]:
    roots = [default_cache_dir() / "models"]
    if cache_dir:
        roots.append(Path(cache_dir) / "models")
    return [r.resolve() for r in roots]


def check_output_dir(out: str | os.PathLike, overwrite: bool, *, allow_same_as: str | os.PathLike | None = None,
                     cache_dir: str | os.PathLike | None = None) -> Path:
    """Check ``out`` before any work: refuse to replace an existing, non-empty ``out`` unless
    ``overwrite`` is set, refuse the cache's own models even then, and fail now (not after the
    work) when the parent is a file or cannot be written.

    ``allow_same_as`` lets a sequential round write back into the checkpoint it was loaded from
    (the replacement is still atomic); the caller passes it only for outputs of ``unierase``.
    """
    out = Path(out)
    resolved = out.resolve()
    for root in _protected_roots(cache_dir):
        if resolved == root or root in resolved.parents:
            raise UniEraseError(f"output directory {out} is inside the model cache {root}; choose another --out")
    if out.exists() and not out.is_dir():
        raise UniEraseError(f"output path {out} exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not overwrite:
        same = allow_same_as is not None and Path(allow_same_as).resolve() == resolved
        if not same:
            raise UniEraseError(f"output directory {out} already exists and is not empty; pass --overwrite to replace it")
    parent = resolved.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UniEraseError(f"cannot write {out}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UniEraseError(f"cannot write {out}: {parent} is not writable")
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_interrupted(out: str | os.PathLike) -> None:
    """Clean up after a writer of ``out`` that was killed: remove its temporary folders and, if it
    died between the two renames of the fallback swap, put the previous output back."""
    out = Path(out).absolute()
    if not out.parent.is_dir():
        return
    for entry in out.parent.iterdir():
        name = entry.name
        if not name.startswith(f".{out.name}.") or not entry.is_dir():
            continue
        parts = name[len(out.name) + 2:].split(".")
        if len(parts) < 2 or not parts[0].isdigit() or parts[-1] not in ("partial", "old"):
            continue
        if _pid_alive(int(parts[0])) and int(parts[0]) != os.getpid():
            continue
        if parts[-1] == "old" and not out.exists():
            os.replace(entry, out)  # the swap was cut between its two renames
        else:
            shutil.rmtree(entry, ignore_errors=True)


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2); False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd = -100
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    if ctypes.get_errno() in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()), str(b))


@contextlib.contextmanager
def atomic_directory(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory next to ``out``; on success it is fsync'd and replaces ``out``
    in one atomic exchange (two renames where the system has no exchange; an interrupted swap is
    repaired by ``recover_interrupted``).

    On failure the temporary directory is removed and ``out`` is untouched; a killed writer's
    temporary directory is removed by the next writer of ``out``.
    """
    out = Path(out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    recover_interrupted(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}.", suffix=".partial", dir=out.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would make the output private
    try:
        yield tmp
        fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fault_point("before-swap")
    if out.exists() and _exchange(tmp, out):
        fault_point("after-swap")
        fsync_path(out.parent)
        shutil.rmtree(tmp, ignore_errors=True)  # now holds the previous output
        return
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.{os.getpid()}.old"
        os.replace(out, old)
        fault_point("between-renames")
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    fsync_path(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


class DirectoryLock:
    """An advisory lock on a model or output directory, held for the length of a run.

    The lock file is a sibling (``.<name>.lock``), since the directory itself is replaced by a
    rename. Writers take it exclusively, readers of an input shared; the kernel drops it when the
    process dies, so a stale lock file never blocks anyone.
    """

    def __init__(self, path: str | os.PathLike, *, exclusive: bool = True):
        self.path = Path(path).absolute()
        self.exclusive = exclusive
        self.lockfile = self.path.parent / f".{self.path.name}.lock"
        self._fd: int | None = None

    def __enter__(self) -> "DirectoryLock":
        import fcntl

        self.lockfile.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lockfile, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
            os.close(fd)
            who = f"being written by unierase process {holder}" if holder else "being read by another unierase process"
            raise UniEraseError(f"{self.path} is {who} (lock {self.lockfile}); wait for it to finish") from None
        if self.exclusive:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            if self.exclusive:
                os.ftruncate(self._fd, 0)  # no stale pid for the next holder's error message
            os.close(self._fd)  # closing releases the flock
            self._fd = None


@contextlib.contextmanager
def locked_run(out: str | os.PathLike | None, inputs: list[str | os.PathLike | None] = ()) -> Iterator[None]:
    """Hold the exclusive lock of ``out`` and a shared lock of every input directory (other than ``out``)."""
    with contextlib.ExitStack() as stack:
        target = Path(out).absolute() if out is not None else None
        if target is not None:
            stack.enter_context(DirectoryLock(target))
        for item in inputs:
            if item is None or not Path(item).is_dir():
                continue
            if target is not None and Path(item).absolute() == target:
                continue
            stack.enter_context(DirectoryLock(item, exclusive=False))
        yield


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

    UTF-8 with or without a byte-order mark; LF, CRLF or CR line ends. Errors name the file and
    line: a missing file, bytes that are not UTF-8, a malformed line, a line that is not an object.
    """
    path = Path(path)
    if not path.is_file():
        raise UniEraseError(f"{what} {path} not found")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise UniEraseError(f"{path}:{line}: not UTF-8 text (byte 0x{data[err.start]:02x}); save the file as UTF-8") from None
    rows: list[tuple[int, dict]] = []
    for number, line in enumerate(re.split(r"\r\n|\r|\n", text), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise UniEraseError(f"{path}:{number}: malformed JSON ({err.msg} at column {err.colno})") from None
        except RecursionError:
            raise UniEraseError(f"{path}:{number}: JSON nested too deeply") from None
        if not isinstance(item, dict):
            raise UniEraseError(f"{path}:{number}: expected a JSON object, got {type(item).__name__}")
        rows.append((number, item))
    return rows
