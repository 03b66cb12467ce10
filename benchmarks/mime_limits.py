"""What the worst MIME a partner may send costs to read, just inside the limits.

The MIME reader's limits (``ebxml/mime_headers``: a Content-Type of at most 8 kB, a part's
header block of at most 64 kB, a mail's of at most 256 kB; ``ebxml/mime``: at most 100 parts)
keep each input small; this prints the CPU time of the pathological shapes within them, which
used to cost time quadratic in their size (tests/unit/ebxml/test_mime_limits.py counts the
costs instead of timing them):

- a Content-Type that is nothing but value-less tokens (``; a; a; a ...``);
- 99 parts, each with a header block folded into 4-byte continuation lines, from a file and
  from memory;
- a mail whose own header block is that, at 256 kB.

Run: ``python benchmarks/mime_limits.py``.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from meldingstjener.ebxml.mime import MAX_PARTS, unpackage, unpackage_message
from meldingstjener.ebxml.mime_headers import (
    MAX_CONTENT_TYPE,
    MAX_HEADER_BLOCK,
    MAX_PART_HEADER_BLOCK,
    parse_content_type,
)

CONTENT_TYPE = 'multipart/related; type="text/xml"; boundary="B"; start="<e>"'


def _cpu_ms(run: Callable[[], Any]) -> float:
    start = time.process_time()
    run()
    return (time.process_time() - start) * 1000


def _folded(size: int) -> bytes:
    return b"X-A: a\r\n" + b" a\r\n" * ((size - 20) // 4) + b"\r\n"


def main() -> None:
    stray = "multipart/related" + "; a" * ((MAX_CONTENT_TYPE - 40) // 3) + "; boundary=B"
    print(f"Content-Type of {len(stray)} characters, all stray tokens: "
          f"{_cpu_ms(lambda: parse_content_type(stray)):.2f} ms")  # fmt: skip

    part = b"--B\r\nContent-ID: <p%d>\r\n" + _folded(MAX_PART_HEADER_BLOCK - 40) + b"x\r\n"
    body = (
        b"--B\r\nContent-ID: <e>\r\n\r\n<x/>\r\n"
        + b"".join(part % n for n in range(MAX_PARTS - 1))
        + b"--B--\r\n"
    )
    print(f"{MAX_PARTS - 1} parts with folded {MAX_PART_HEADER_BLOCK // 1024} kB headers, "
          f"{len(body) // 1024} kB in memory: "
          f"{_cpu_ms(lambda: unpackage(CONTENT_TYPE, body)):.1f} ms")  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "body"
        path.write_bytes(body)
        print(f"  the same from a file: {_cpu_ms(lambda: unpackage(CONTENT_TYPE, path)):.1f} ms")

    mail = (
        _folded(MAX_HEADER_BLOCK - 200)[:-2]
        + f"Content-Type: {CONTENT_TYPE}\r\n\r\n".encode()
        + b"--B\r\nContent-ID: <e>\r\n\r\n<x/>\r\n--B--\r\n"
    )
    print(f"a mail with {len(mail) // 1024} kB of folded headers: "
          f"{_cpu_ms(lambda: unpackage_message(mail)):.1f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
