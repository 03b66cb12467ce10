"""Allows `python -m meldingstjener`."""

from meldingstjener.cli import main

if __name__ == "__main__":
    main()
