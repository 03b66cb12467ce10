"""meldingstjener: a message server (MSH) for electronic messaging in Norwegian health care."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("meldingstjener")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
