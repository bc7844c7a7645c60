"""Reading a JSONL manifest row by row, in bounded memory, hashing its bytes on the way.

A run reads a manifest whole (at most :data:`intake.limits.MAX_MANIFEST_BYTES`);
``foundry3d validate`` streams JSONL files of millions of rows through this reader instead, so
its memory does not grow with the file (only the set of row ids seen does).
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from intake.readers import FileProblem, Row, jsonl_row


class JsonlStream:
    """The rows of a JSONL file, read line by line; :attr:`sha256` is set once all are read.

    Lines end in LF, CRLF or a lone CR, as :func:`intake.readers.jsonl_rows` reads them; line
    numbers are physical lines. Raises :class:`intake.readers.FileProblem` for a file that is
    missing, not a regular file, larger than ``max_bytes`` or not UTF-8 (at the line of the
    first bad byte, after the rows before it were yielded).
    """

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.sha256: str | None = None

    def __iter__(self) -> Iterator[Row]:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise FileProblem(0, "manifest file not found") from None
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise FileProblem(0, f"manifest cannot be opened: {reason}") from None
        digest = hashlib.sha256()
        # fstat before fdopen: opening a folder's descriptor as a file object raises.
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise FileProblem(0, "manifest path is not a regular file")
        with os.fdopen(fd, "rb") as fh:
            if info.st_size > self.max_bytes:
                raise FileProblem(
                    0, f"manifest is {info.st_size} bytes, more than the limit of {self.max_bytes}"
                )
            number = 0
            offset = 0
            seen_text = False
            for raw in _lines(fh, self.max_bytes):
                digest.update(raw)
                try:
                    text = raw.decode("utf-8-sig" if number == 0 else "utf-8")
                except UnicodeDecodeError as exc:
                    raise FileProblem(
                        number + 1,
                        f"manifest is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset "
                        f"{offset + exc.start}); save it as UTF-8",
                    ) from None
                offset += len(raw)
                text = text.removesuffix("\n").removesuffix("\r")
                for piece in text.split("\r"):  # a lone CR ends a line too (classic Mac files)
                    number += 1
                    row = jsonl_row(number, piece)
                    if row is not None:
                        seen_text = True
                        yield row
        if not seen_text:
            raise FileProblem(0, "manifest file is empty")
        self.sha256 = digest.hexdigest()


def _lines(fh, max_bytes: int) -> Iterator[bytes]:
    """The file's lines as bytes; a read the OS refuses (EIO from ``/proc/self/mem``, EACCES) or
    more than ``max_bytes`` in all (files under ``/proc`` claim size 0) is a :class:`FileProblem`
    at once, never a traceback or an endless read."""
    total = 0
    while True:
        try:
            raw = fh.readline(max_bytes + 1 - total)
        except OSError as exc:
            raise FileProblem(0, f"manifest cannot be read: {exc.strerror or exc}") from None
        if not raw:
            return
        total += len(raw)
        if total > max_bytes:
            raise FileProblem(0, f"manifest is more than the limit of {max_bytes} bytes")
        yield raw
