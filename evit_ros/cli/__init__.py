"""The ``evit-ros`` command line: one entry point, one module per group of subcommands."""

import argparse
import importlib
import importlib.util
import logging
import sys
from typing import List, Optional

# Each module defines ``register(subparsers)``, adding its subcommands with a ``func``
# default that takes the parsed arguments and returns an exit code.
COMMAND_MODULES = (
    'evit_ros.cli.weights',     # weights fetch | import | list
    'evit_ros.cli.runtime',     # export, bench
    'evit_ros.cli.engines',     # build-engine, engines list | clean
    'evit_ros.cli.node',        # node
    'evit_ros.cli.bags',        # make-bag, replay, demo
    'evit_ros.cli.data',        # data fetch | import | list
    'evit_ros.cli.evaluate',    # evaluate (many bags, on Dask)
)


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit code 1 (or ``code``)."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def log_runtime_to_stderr() -> None:
    """Show the runtime's progress lines (exports, engine builds, cache decisions) on stderr."""
    logger = logging.getLogger('evit_ros.runtime')
    if not logging.getLogger().handlers and not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter('%(asctime)s %(message)s', '%H:%M:%S'))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def build_parser() -> argparse.ArgumentParser:
    """Return the parser with every available subcommand registered."""
    parser = argparse.ArgumentParser(
        prog='evit-ros', description='EfficientViT-Seg for ROS 2: models, runtimes, replay.')
    subparsers = parser.add_subparsers(dest='command', metavar='COMMAND')
    for name in COMMAND_MODULES:
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run ``evit-ros``; user errors print one line to stderr, never a traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, 'func', None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CommandError as exc:
        print(f'evit-ros {args.command}: error: {exc}', file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print(f'evit-ros {args.command}: interrupted', file=sys.stderr)
        return 130


if __name__ == '__main__':
    sys.exit(main())
