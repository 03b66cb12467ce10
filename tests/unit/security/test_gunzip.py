"""gunzip_if_gzip (CMS SignedData content): a gzip stream cut short is refused, not shortened."""

from __future__ import annotations

import pytest

from meldingstjener.security.cms_common import CmsError, gunzip_if_gzip, gzip_bytes

TEXT = b"<MsgHead>" + bytes(range(256)) * 64 + b"</MsgHead>"


def test_a_whole_stream_is_unzipped_and_plain_data_passes() -> None:
    assert gunzip_if_gzip(gzip_bytes(TEXT)) == TEXT
    assert gunzip_if_gzip(TEXT) == TEXT


WHOLE = gzip_bytes(TEXT)


@pytest.mark.parametrize(
    "cut",
    [WHOLE[:10], WHOLE[: len(WHOLE) // 2], WHOLE[:-8]],
    ids=["header only", "half", "no trailer"],
)
def test_a_stream_cut_short_is_not_valid_gzip(cut: bytes) -> None:
    with pytest.raises(CmsError, match="not valid gzip"):
        gunzip_if_gzip(cut)
