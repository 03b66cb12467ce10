"""Commands for business messages: validate, apprec build, dialog build."""

from __future__ import annotations
