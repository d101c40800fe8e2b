"""``python -m backfill [flags]``: the same as ``livemigrate backfill [flags]``, started faster.

It parses only the backfill's own flags (the ``livemigrate`` command imports every engine to
build its help), so worker processes started with ``--processes`` or by a supervisor start
quickly. Settings come from ``LIVEMIGRATE_*`` and livemigrate.toml as usual.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from backfill import cli
from livemigrate.aws import make_clients
from livemigrate.config import load_settings
from livemigrate.errors import LivemigrateError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backfill", description=cli.__doc__)
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    cli.add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    try:
        settings = load_settings()
        return cli.run(args, settings, make_clients(settings, max_pool=100))
    except LivemigrateError as exc:
        print(f"livemigrate backfill: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
