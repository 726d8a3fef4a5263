"""``evit-ros weights fetch | import | list``: get official checkpoints and see what is here."""

import argparse
import sys
from typing import List, Optional

from evit_ros.cli import CommandError
from evit_ros.model.registry import get_entry, ModelEntry, MODELS, UnknownModelError

ALL = 'all'
# Named here (not read from evit_ros.weights) so that --help does not import torch.
URL_ENV = 'EVIT_ROS_WEIGHTS_URL'


def register(subparsers) -> None:
    """Add ``weights`` and its actions to the ``evit-ros`` parser."""
    parser = subparsers.add_parser(
        'weights', help='fetch, import and list official checkpoints',
        description='Official checkpoints live in $EVIT_ROS_WEIGHTS_DIR (searched first) or '
                    'in the cache $EVIT_ROS_CACHE/weights (default ~/.cache/evit_ros). '
                    f'${URL_ENV} replaces the download base URL.')
    actions = parser.add_subparsers(dest='action', metavar='ACTION')
    parser.set_defaults(func=lambda args: _usage(parser))

    fetch = actions.add_parser(
        'fetch', help='download a checkpoint into the cache (verified, resumable)',
        description='Download the official checkpoint over HTTPS into the cache. An '
                    'interrupted download resumes; a file failing its sha256 is deleted and '
                    'any cached copy kept. Without network use `weights import`.')
    fetch.add_argument('model', help=f'model name ({", ".join(MODELS)}) or "{ALL}"')
    fetch.add_argument('--force', action='store_true',
                       help='download again even when a verified copy is cached')
    fetch.set_defaults(func=_fetch)

    install = actions.add_parser(
        'import', help='install a checkpoint file you already have into the cache',
        description='Check a checkpoint file (sha256 when known, and a strict load into the '
                    'model) and copy it into the cache.')
    install.add_argument('model', help='model name the file belongs to')
    install.add_argument('file', help='path of the checkpoint file, e.g. a downloaded '
                                      'efficientvit_seg_b0_cityscapes.pt')
    install.set_defaults(func=_import)

    listing = actions.add_parser(
        'list', help='show every model: where its checkpoint is, size and sha256 status')
    listing.add_argument('--no-check', action='store_true',
                         help='do not hash the files (faster with large checkpoints)')
    listing.set_defaults(func=_list)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _entry(name: str) -> ModelEntry:
    try:
        return get_entry(name)
    except UnknownModelError as exc:
        raise CommandError(str(exc)) from None


def _notify(message: str) -> None:
    print(f'evit-ros weights: {message}', file=sys.stderr)


class _Progress:
    """Percentages on stderr, only when it is a terminal (logs stay clean)."""

    def __init__(self, label: str):
        self.label = label
        self.shown = -1
        self.live = sys.stderr.isatty()

    def __call__(self, done: int, total: Optional[int]) -> None:
        if not self.live:
            return
        step = done * 100 // total if total else done >> 20
        if step != self.shown:
            self.shown = step
            of = f' of {total / 1e6:.1f} MB ({step}%)' if total else ' MB'
            print(f'\r{self.label}: {done / 1e6:.1f}{of}', end='', file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.live and self.shown >= 0:
            print(file=sys.stderr)


def _describe(installed) -> str:
    from evit_ros import weights
    if installed.recorded:
        check = 'recorded now (trust on first use)'
    else:
        check = {'published': 'verified (published)',
                 'recorded': 'verified (recorded on first use)',
                 'unknown': 'unknown (none published or recorded)'}[
                     weights.hash_source(installed.entry)]
    action = {'cached': 'already cached (--force downloads it again)',
              'downloaded': 'downloaded', 'imported': 'imported'}[installed.action]
    return (f'{installed.entry.name}: {action}: {installed.path} '
            f'({installed.size / 1e6:.1f} MB, sha256 {installed.sha256} {check})')


def _fetch_one(entry: ModelEntry, force: bool):
    from evit_ros import weights
    from evit_ros.model.checkpoint import CheckpointError
    progress = _Progress(entry.checkpoint_file)
    try:
        return weights.fetch(entry, force=force, notify=_notify, progress=progress)
    except (weights.FetchError, CheckpointError) as exc:
        raise CommandError(str(exc)) from None
    finally:
        progress.close()


def _fetch(args: argparse.Namespace) -> int:
    if args.model.strip().lower() != ALL:
        print(_describe(_fetch_one(_entry(args.model), args.force)))
        return 0
    failed: List[str] = []
    for entry in MODELS.values():
        try:
            print(_describe(_fetch_one(entry, args.force)), flush=True)
        except CommandError as exc:
            _notify(f'error: {exc}')
            failed.append(entry.name)
    if failed:
        raise CommandError(f'{len(failed)} of {len(MODELS)} checkpoints not fetched: '
                           f'{", ".join(failed)}')
    return 0


def _import(args: argparse.Namespace) -> int:
    from evit_ros import weights
    from evit_ros.model.checkpoint import CheckpointError
    entry = _entry(args.model)
    try:
        installed = weights.import_file(entry, args.file, notify=_notify)
    except (weights.FetchError, CheckpointError) as exc:
        raise CommandError(str(exc)) from None
    print(_describe(installed))
    return 0


def _list(args: argparse.Namespace) -> int:
    from evit_ros import weights
    rows = [('MODEL', 'WHERE', 'SIZE', 'SHA256', 'PATH')]
    for entry in MODELS.values():
        status = weights.weights_status(entry, check=not args.no_check)
        size = f'{status.size / 1e6:.1f} MB' if status.size is not None else '-'
        rows.append((entry.name, status.where, size, status.sha256,
                     str(status.path) if status.path else '-'))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print('  '.join(cell.ljust(width) for cell, width in zip(row, widths)) + '  ' + row[4])
    dirs = weights.weights_dirs()
    print(f'\nsearched: {", ".join(str(d) for d in dirs)}'
          + ('' if len(dirs) > 1 else ' (set EVIT_ROS_WEIGHTS_DIR to add a folder)'))
    return 0
