"""``python -m backfill [flags]`` is ``livemigrate backfill [flags]`` (worker processes use it)."""

from __future__ import annotations

import sys

from livemigrate.cli import main

if __name__ == "__main__":
    sys.exit(main(["backfill", *sys.argv[1:]]))
