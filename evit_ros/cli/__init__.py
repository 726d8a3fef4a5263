"""The ``evit-ros`` command line: one entry point, one module per group of subcommands.

Start-up stays light: a command imports only its own module, and the modules import torch,
rclpy, ONNX or OpenCV inside the functions that need them, so ``--help`` answers at once.
"""

import argparse
import importlib
import importlib.util
import logging
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

# Subcommand -> (module, one-line help). Each module defines ``register(subparsers)``,
# adding its subcommands with a ``func`` default that takes the parsed arguments and
# returns an exit code; only the module of the command being run is imported.
COMMANDS: Dict[str, Tuple[str, str]] = {
    'weights': ('evit_ros.cli.weights', 'fetch, import and list official checkpoints'),
    'export': ('evit_ros.cli.runtime', 'export a model to ONNX, checked against PyTorch'),
    'bench': ('evit_ros.cli.runtime', 'time whole segment() calls on one backend'),
    'build-engine': ('evit_ros.cli.engines', 'build a TensorRT engine ahead of time'),
    'engines': ('evit_ros.cli.engines', 'list or clean the TensorRT engine cache'),
    'node': ('evit_ros.cli.node', 'run segmentation_node'),
    'make-bag': ('evit_ros.cli.bags', 'build a rosbag2 bag from an image folder (and labels)'),
    'replay': ('evit_ros.cli.bags', 'replay a bag through the model or the node; score '
                                    'accuracy, latency'),
    'demo': ('evit_ros.cli.bags', 'the quick start: a sample bag through the real node, '
                                  'with a report'),
    'data': ('evit_ros.cli.data', 'fetch, import and list real data sets (CamVid)'),
    'evaluate': ('evit_ros.cli.evaluate', 'evaluate a fleet of bags'),
    'config': ('evit_ros.cli.config', "print where the installed config files are (Fast DDS "
                                      "profile, presets)"),
}
# Modules registered on every start, for subcommands not in COMMANDS yet (slower: keep
# them light, or add their commands to COMMANDS).
COMMAND_MODULES: Tuple[str, ...] = ()


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


def _available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def _command_in(argv: Sequence[str]) -> Optional[str]:
    """Return the subcommand named by ``argv`` (its first word) when it is installed."""
    if (argv and not argv[0].startswith('-') and argv[0] in COMMANDS
            and _available(COMMANDS[argv[0]][0])):
        return argv[0]
    return None


def build_parser(argv: Optional[Sequence[str]] = None) -> argparse.ArgumentParser:
    """Return the parser for ``argv``.

    With a known command in ``argv``, only that command's module is imported and
    registered; otherwise (``--help``, no or an unknown command) every command is listed
    from :data:`COMMANDS` without importing any. ``build_parser()`` with no ``argv``
    registers every available command fully.
    """
    parser = argparse.ArgumentParser(
        prog='evit-ros', description='EfficientViT-Seg for ROS 2: models, runtimes, replay.')
    subparsers = parser.add_subparsers(dest='command', metavar='COMMAND')
    command = _command_in(argv) if argv is not None else None
    registered = set()
    if argv is None:
        modules = [module for module, _ in COMMANDS.values()]
    elif command is not None:
        modules = [COMMANDS[command][0]]
    else:
        modules = []
        for name, (module, text) in COMMANDS.items():
            if _available(module):
                subparsers.add_parser(name, help=text, add_help=False)
    for module in dict.fromkeys(modules + [m for m in COMMAND_MODULES if m not in modules]):
        if module not in registered and _available(module):
            importlib.import_module(module).register(subparsers)
            registered.add(module)
    return parser


def _quiet_broken_pipe() -> int:
    """Stop quietly when the reader of stdout went away (``evit-ros ... | head -1``)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the exit-time flush must not fail again
    except (OSError, ValueError):
        pass
    return 141  # as a command killed by SIGPIPE: 128 + 13


def main(argv: Optional[List[str]] = None) -> int:
    """Run ``evit-ros``; user errors print one line to stderr, never a traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    try:
        args = parser.parse_args(argv)
        if not getattr(args, 'func', None):
            parser.print_help()
            return 2
        try:
            code = int(args.func(args) or 0)
        except CommandError as exc:
            print(f'evit-ros {args.command}: error: {exc}', file=sys.stderr)
            return exc.code
        except KeyboardInterrupt:
            print(f'evit-ros {args.command}: interrupted', file=sys.stderr)
            return 130
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        return _quiet_broken_pipe()


def run() -> None:
    """Console-script entry point: :func:`main`, then exit without interpreter teardown.

    Tearing down an interpreter that imported torch takes 1-3 s on a loaded CPU, longer
    than a replay stopped by Ctrl-C may take to return. Everything a command writes is
    closed before :func:`main` returns, so only the streams need flushing here.
    """
    code = main()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass
    os._exit(code)


if __name__ == '__main__':
    run()
