"""Real, tiny images for the tests, built by hand so no imaging library is needed."""

from __future__ import annotations

import struct
import zlib


def png(width: int = 3, height: int = 2, shade: int = 0x40) -> bytes:
    """An RGB PNG (IHDR, one IDAT, IEND) as an image program writes it; ``shade`` changes the
    bytes, for tests that need two different images of one size."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(b"\x00" + bytes([shade, 0x20, 0x30]) * width for _row in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
