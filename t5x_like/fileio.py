"""Files a kill or a power loss cannot leave half written, and the append-only JSONL log.

A file the run keeps is never rewritten in place: a rewrite goes to a temporary file in the same
directory (a rename is atomic only within one file system), is flushed and fsynced, and is then
renamed over the old one, so a reader sees the old content or the new, never an empty file.
Dropping the tail of a log is one `truncate` call at a line boundary, which cannot lose the rows
before it. No jax here: a subprocess that only touches files should start in well under a second.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
from typing import IO, Any, Callable, Iterator

log = logging.getLogger(__name__)


class LogFileError(ValueError):
    """A JSONL log holds a line that is not a complete JSON object, and not at the end."""


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make a rename or a new file in `directory` survive a power loss."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:
        # Some file systems (FUSE mounts, some network ones) cannot sync a directory; the
        # rename has still happened, it is only less durable there.
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, mode: str = "w", **open_kwargs) -> Iterator[IO]:
    """A file whose content replaces `path` only when the block exits without an error.

    The temporary name carries the pid, so concurrent writers of one path do not share it; a
    kill leaves it behind (`path`.tmp<pid>) with `path` untouched.
    """
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(os.path.dirname(path) or ".")


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Replace `path`'s content with `text` (UTF-8), all or nothing."""
    with atomic_writer(path, "w", encoding="utf-8") as f:
        f.write(text)


def jsonl_rows(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any] | None]]:
    """(byte offset, row) of each line of a JSONL log, streamed; blank lines are skipped.

    A last line without its newline is an append cut short (each append is one write() of a
    row and its newline): it comes as (offset, None) and is logged. A line elsewhere that is not
    a JSON object raises LogFileError naming the file and the line.
    """
    offset = 0
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            start, offset = offset, offset + len(line)
            if not line.endswith(b"\n"):
                log.warning("%s: ignoring line %d, %d bytes without a newline: an append cut "
                            "short by a kill or a power loss", path, number, len(line))
                yield start, None
                return
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                problem = None if isinstance(row, dict) else f"a JSON {type(row).__name__}"
            except ValueError as e:
                problem = str(e)
            if problem is not None:
                raise LogFileError(
                    f"{path}, line {number} (byte {start}) is not a JSON object ({problem}): "
                    f"{line[:80]!r}. Fix or delete that line, then relaunch.")
            yield start, row


def truncate_jsonl(path: str | os.PathLike, drop: Callable[[dict[str, Any]], bool]) -> int:
    """Remove the rows `drop` selects (and a torn last line) from the log at `path`; returns
    how many rows went.

    Rows to drop normally form the log's tail, which one truncate at the first of them removes.
    Should a kept row follow a dropped one, the kept rows are rewritten to a temporary file and
    renamed over the log instead.
    """
    cut, dropped, interleaved = None, 0, False
    for offset, row in jsonl_rows(path):
        if row is None or drop(row):
            cut = offset if cut is None else cut
            dropped += row is not None
        elif cut is not None:
            interleaved = True
    if interleaved:
        _rewrite_kept(path, drop)
    elif cut is not None:
        with open(path, "r+b") as f:
            f.truncate(cut)
            os.fsync(f.fileno())
    return dropped


def _rewrite_kept(path: str | os.PathLike, drop: Callable[[dict[str, Any]], bool]) -> None:
    with open(path, "rb") as src, atomic_writer(path, "wb") as dst:
        for offset, row in jsonl_rows(path):
            if row is not None and not drop(row):
                src.seek(offset)
                dst.write(src.readline())
