"""Commands for keys and crypto: pki, cms, ebxml verify."""

from __future__ import annotations
