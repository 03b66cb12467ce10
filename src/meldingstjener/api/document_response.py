"""The answer of ``GET /Messages/{id}/business-document``, written from the stored file.

The body is the JSON of ``GetBusinessDocumentResponse`` (the document base64, then its content
type and transfer encoding), byte for byte what FastAPI would write for the model. A large
document is read, encoded and sent in pieces with its length announced up front, so that a
35 MB fagmelding is never held whole, nor its 47 MB of base64, nor a JSON string of it.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from typing import BinaryIO

from fastapi.responses import Response, StreamingResponse

_HEAD = b'{"businessDocument":"'
_TAIL = b'","contentType":"application/xml","contentTransferEncoding":"base64"}'
PIECE = 3 * 256 * 1024  # a multiple of 3: the base64 of each piece has no padding inside


def encoded_length(size: int) -> int:
    """The length of the JSON body for a document of ``size`` bytes."""
    return len(_HEAD) + 4 * ((size + 2) // 3) + len(_TAIL)


def _pieces(document: BinaryIO) -> Iterator[bytes]:
    try:
        yield _HEAD
        while piece := document.read(PIECE):
            yield base64.b64encode(piece)
        yield _TAIL
    finally:
        document.close()


def business_document_response(document: BinaryIO) -> Response:
    """The response for an open document file (closed when the response is done with it)."""
    size = os.fstat(document.fileno()).st_size
    if size <= PIECE:  # one piece: answered at once
        with document:
            return Response(
                _HEAD + base64.b64encode(document.read()) + _TAIL, media_type="application/json"
            )
    return StreamingResponse(
        _pieces(document),
        media_type="application/json",
        headers={"Content-Length": str(encoded_length(size))},
    )
