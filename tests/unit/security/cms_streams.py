"""Byte streams for the CMS streaming tests: a plaintext sink and a slow reader."""

from __future__ import annotations

import io


class Sink:
    """A plaintext sink that remembers how often it was reset."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.resets = 0

    def write(self, data: bytes) -> None:
        self.data += data

    def reset(self) -> None:
        self.data.clear()
        self.resets += 1


class Trickle(io.RawIOBase):
    """A stream that hands out at most ``most`` bytes per read, as a slow socket would."""

    def __init__(self, data: bytes, most: int = 7) -> None:
        self.source = io.BytesIO(data)
        self.most = most

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return self.source.read(min(self.most, size if size >= 0 else self.most))
