"""``python -m stream_consumer [options]`` is ``livemigrate consume [options]``."""

from __future__ import annotations

import sys

from livemigrate.cli import main

if __name__ == "__main__":
    sys.exit(main(["consume", *sys.argv[1:]]))
