"""Read a growing file from a byte offset, whole lines only, so a reader that comes back with the offset it was
given sees every line once: no line lost, none repeated.

A position is ``(file identity, offset)``. The identity is the inode and device: when a file is replaced rather
than appended to (``--resume`` rewrites metrics.jsonl without the steps it redoes), the old offset means nothing
in the new file, and the reader is told to start again (``reset``).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_CHUNK = 1 << 20  # at most this many bytes per read; the rest comes with the next one
_PIECE = re.compile(r"[^\r\n]*[\r\n]")


@dataclass(frozen=True)
class Position:
    ident: str = ""  # "<device>-<inode>" of the file the offset belongs to; "" before the file exists
    offset: int = 0

    def encode(self) -> str:
        return f"{self.ident}:{self.offset}"

    @classmethod
    def decode(cls, text: str | None) -> Position:
        if not text or ":" not in text:
            return cls()
        ident, _, offset = text.rpartition(":")
        try:
            return cls(ident, max(0, int(offset)))
        except ValueError:
            return cls()


@dataclass
class Chunk:
    lines: list[str]
    position: Position
    reset: bool  # the file is not the one `position` was in (or shrank): `lines` start at its beginning


def identity(path: Path) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return ""
    return f"{st.st_dev}-{st.st_ino}"


def read_from(path: Path | None, pos: Position, max_bytes: int = MAX_CHUNK) -> Chunk:
    """The complete lines of `path` after `pos` (a last line without its newline is left for later)."""
    if path is None:
        return Chunk([], pos, False)
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            ident = f"{st.st_dev}-{st.st_ino}"
            reset = bool(pos.ident) and (pos.ident != ident or pos.offset > st.st_size)
            offset = 0 if reset or pos.ident != ident else pos.offset
            f.seek(offset)
            data = f.read(max_bytes)
    except FileNotFoundError:
        return Chunk([], pos, False)
    end = max(data.rfind(b"\n"), data.rfind(b"\r"))
    if end < 0:
        if len(data) >= max_bytes:  # one line longer than a chunk: hand it over in pieces
            end = len(data) - 1
        else:
            return Chunk([], Position(ident, offset), reset)
    whole = data[: end + 1]
    return Chunk(split_lines(whole.decode("utf-8", "replace")), Position(ident, offset + len(whole)), reset)


def split_lines(text: str) -> list[str]:
    """Lines ended by a newline, or by a carriage return (a progress bar redrawing its line): those keep their
    trailing ``\r`` so that a reader can replace them with the next one, as a terminal does."""
    return [m[:-1] if m.endswith("\n") else m for m in _PIECE.findall(text.replace("\r\n", "\n"))]


def parse_records(lines: list[str]) -> list[dict[str, Any]]:
    out = []
    for line in lines:
        if line.strip():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
    return out


def last_lines(path: Path, n: int = 200, max_bytes: int = 256 * 1024) -> tuple[list[str], Position]:
    """The last `n` complete lines of a log and the position after them (where a live tail goes on)."""
    try:
        size = path.stat().st_size
    except OSError:
        return [], Position()
    start = max(0, size - max_bytes)
    chunk = read_from(path, Position(identity(path), start), max_bytes)
    lines = chunk.lines[1:] if start > 0 else chunk.lines  # the first may be cut
    return lines[-n:], chunk.position
