"""Official checkpoints on this machine: where they live, how they arrive, how they are checked.

Search order for a model's checkpoint: ``$EVIT_ROS_WEIGHTS_DIR`` (a folder of official
files), then the cache ``$EVIT_ROS_CACHE`` (default ``~/.cache/evit_ros``).

:func:`fetch` downloads a checkpoint from the release (or ``$EVIT_ROS_WEIGHTS_URL``, a base
URL the file name is appended to) and :func:`import_file` installs one the user already
has. Both verify before installing and install atomically, so the cache only ever holds
whole, checked files. Checkpoints without a published sha256 get theirs recorded on first
install (trust on first use); every later download or import must match it.
"""

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional

from evit_ros import download
from evit_ros.model.checkpoint import CheckpointError, load_into, read_state_dict, sha256_of
from evit_ros.model.efficientvit import EfficientViTSeg
from evit_ros.model.registry import ModelEntry

HASHES_FILE = 'recorded_sha256.json'
#: Base URL override: ``$EVIT_ROS_WEIGHTS_URL/<checkpoint file>``.
URL_ENV = 'EVIT_ROS_WEIGHTS_URL'
PART_SUFFIX = '.part'


class WeightsNotFound(FileNotFoundError):
    """No checkpoint for a model was found; the message says how to get one."""

    def __str__(self) -> str:
        return self.args[0]


def cache_dir() -> Path:
    """Return the weights cache folder (``$EVIT_ROS_CACHE`` or ``~/.cache/evit_ros``)."""
    root = os.environ.get('EVIT_ROS_CACHE') or os.path.join('~', '.cache', 'evit_ros')
    return Path(root).expanduser().resolve() / 'weights'


def weights_dirs() -> list:
    """Return the folders searched for checkpoints, in order."""
    dirs = []
    if os.environ.get('EVIT_ROS_WEIGHTS_DIR'):
        dirs.append(Path(os.environ['EVIT_ROS_WEIGHTS_DIR']).expanduser().resolve())
    dirs.append(cache_dir())
    return dirs


def recorded_hashes() -> Dict[str, str]:
    """Return the sha256 values recorded on first download (trust on first use)."""
    path = cache_dir() / HASHES_FILE
    try:
        with open(path) as handle:
            data = json.load(handle)
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def expected_sha256(entry: ModelEntry) -> Optional[str]:
    """Return the sha256 a checkpoint must have: the published one, else the recorded one."""
    return entry.checkpoint_sha256 or recorded_hashes().get(entry.checkpoint_file)


def verify(path: Path, entry: ModelEntry) -> str:
    """Check ``path`` against the model's known sha256 and return its digest.

    :raises CheckpointError: naming the expected and the actual value on a mismatch.
    """
    actual = sha256_of(str(path))
    expected = expected_sha256(entry)
    if expected and actual != expected:
        raise CheckpointError(
            f'{path} fails its sha256 check for {entry.name}: expected {expected}, got '
            f'{actual}; the file is corrupt or not the official checkpoint. Fetch it again: '
            f'evit-ros weights fetch {entry.name}')
    return actual


def fetch_hint(entry: ModelEntry) -> str:
    """Return the commands that make a model's weights available."""
    return (f'get them with `evit-ros weights fetch {entry.name}` (downloads '
            f'{entry.checkpoint_url}), or, with the file at hand, '
            f'`evit-ros weights import {entry.name} /path/to/{entry.checkpoint_file}`, '
            f'or point EVIT_ROS_WEIGHTS_DIR at a folder that holds {entry.checkpoint_file}')


def find_checkpoint(entry: ModelEntry) -> Path:
    """Return the path of the model's official checkpoint on this machine.

    :raises WeightsNotFound: with the fetch and import commands.
    """
    for folder in weights_dirs():
        candidate = folder / entry.checkpoint_file
        if candidate.is_file():
            return candidate
    searched = ', '.join(str(d) for d in weights_dirs())
    raise WeightsNotFound(f'no weights for {entry.name} in {searched}; {fetch_hint(entry)}')


# -- getting checkpoints into the cache ----------------------------------------------------

#: Receives one-line notices for the user (the CLI prints them on stderr).
Notify = Callable[[str], None]


class FetchError(RuntimeError):
    """A checkpoint could not be downloaded or installed; the message is one line."""


@dataclass
class Installed:
    """A checkpoint in the cache and how it got there."""

    entry: ModelEntry
    path: Path
    sha256: str
    size: int
    action: str             # 'cached' (already there), 'downloaded' or 'imported'
    recorded: bool = False  # its sha256 was recorded now (trust on first use)


def weights_url(entry: ModelEntry) -> str:
    """Return where a model's checkpoint is downloaded from (``$EVIT_ROS_WEIGHTS_URL`` aware)."""
    base = os.environ.get(URL_ENV, '').strip()
    if not base:
        return entry.checkpoint_url
    return base.rstrip('/') + '/' + entry.checkpoint_file


def hash_source(entry: ModelEntry) -> str:
    """Say where a model's expected sha256 comes from: published, recorded or unknown."""
    if entry.checkpoint_sha256:
        return 'published'
    return 'recorded' if entry.checkpoint_file in recorded_hashes() else 'unknown'


def ensure_cache_dir() -> Path:
    """Return :func:`cache_dir`, created with user-only permissions (0o700)."""
    folder = cache_dir()
    download.private_dir(folder)
    if folder.stat().st_mode & 0o077 and folder.stat().st_uid == os.getuid():
        os.chmod(folder, 0o700)
    return folder


def record_sha256(entry: ModelEntry, digest: str) -> Path:
    """Record a checkpoint's sha256 (trust on first use) and return the record's path."""
    folder = ensure_cache_dir()
    hashes = recorded_hashes()
    hashes[entry.checkpoint_file] = digest
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=HASHES_FILE + '.', suffix=PART_SUFFIX)
    try:
        with os.fdopen(fd, 'w') as handle:
            json.dump(hashes, handle, indent=2, sort_keys=True)
            handle.write('\n')
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, folder / HASHES_FILE)
    except BaseException:
        _remove(Path(tmp))
        raise
    download.fsync_dir(folder)
    return folder / HASHES_FILE


def check_loads(path: Path, entry: ModelEntry, source: Optional[str] = None) -> None:
    """Check that a checkpoint file loads strictly into the model (``weights_only`` read).

    :param source: how to name the file in errors (defaults to its path).
    :raises CheckpointError: for an unreadable file or any key or shape mismatch.
    """
    source = source or str(path)
    try:
        state_dict = read_state_dict(str(path))
        load_into(EfficientViTSeg(entry.config), state_dict, entry.name,
                  source=f'checkpoint {source}')
    except CheckpointError as exc:
        raise CheckpointError(str(exc).replace(str(path), source)) from None


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _mismatch(what: str, entry: ModelEntry, expected: str, actual: str, tail: str) -> str:
    origin = 'published' if entry.checkpoint_sha256 else 'recorded on first use'
    message = (f'{what} fails its sha256 check for {entry.name}: expected {expected} '
               f'({origin}), got {actual}; {tail}')
    if not entry.checkpoint_sha256:
        message += (f'. If the publisher replaced the file, delete its line from '
                    f'{cache_dir() / HASHES_FILE} and fetch again')
    return message


def _install(tmp: Path, dest: Path, entry: ModelEntry, digest: str, action: str,
             notify: Notify) -> Installed:
    """Move a verified file into place atomically; record its hash when none is known."""
    os.replace(tmp, dest)
    download.fsync_dir(dest.parent)
    recorded = False
    if not expected_sha256(entry):
        record = record_sha256(entry, digest)
        recorded = True
        notify(f'{entry.name}: no published sha256; recorded {digest} in {record} '
               '(trust on first use: later downloads and imports must match it)')
    return Installed(entry, dest, digest, dest.stat().st_size, action, recorded)


def _offline_hint(entry: ModelEntry) -> str:
    return ('without network access, download that file elsewhere and install it with '
            f'`evit-ros weights import {entry.name} FILE`')


def fetch(entry: ModelEntry, force: bool = False, notify: Optional[Notify] = None,
          progress: Optional[download.Progress] = None, max_bytes: int = download.MAX_BYTES,
          timeout: float = download.TIMEOUT_S) -> Installed:
    """Download a model's checkpoint into the cache, verified, resumable and atomic.

    The file arrives in ``<file>.part`` (an earlier partial download is resumed), is checked
    against the published or recorded sha256 (or, with neither, must load strictly into
    the model, and its sha256 is then recorded), and only then replaces the cached file.
    A failed check deletes the download and leaves any cached file as it was.

    :param force: download even when a verified copy is already cached.
    :param notify: receives one-line notices (hash recorded, partial file discarded).
    :param progress: ``progress(done_bytes, total_bytes_or_None)`` during the transfer.
    :raises FetchError: for an unsafe URL, a network failure (the message names the URL and
        the ``evit-ros weights import`` command) or an unusable response.
    :raises CheckpointError: for a download that fails its sha256 or does not fit the model.
    """
    notify = notify or (lambda message: None)
    url = weights_url(entry)
    try:
        download.check_url(url)
    except download.UnsafeURL as exc:
        raise FetchError(f'{exc} (set by {URL_ENV})' if os.environ.get(URL_ENV)
                         else str(exc)) from None
    folder = ensure_cache_dir()
    dest = folder / entry.checkpoint_file
    part = folder / (entry.checkpoint_file + PART_SUFFIX)
    if dest.is_file() and not force:
        try:
            digest = verify(dest, entry)
            return Installed(entry, dest, digest, dest.stat().st_size, 'cached')
        except CheckpointError:
            notify(f'{dest} fails its sha256 check; downloading it again')
    for attempt in (1, 2):
        try:
            transfer = download.download(url, part, max_bytes=max_bytes, timeout=timeout,
                                         expected_size=entry.checkpoint_bytes,
                                         progress=progress)
        except download.Interrupted as exc:
            if not part.is_file() or part.stat().st_size == 0:
                _remove(part)
                raise FetchError(f'{exc}; {_offline_hint(entry)}') from None
            raise FetchError(f'{exc}; the partial file {part} is kept: run the same command '
                             f'again to resume, or {_offline_hint(entry)}') from None
        except download.BadResponse as exc:
            _remove(part)
            raise FetchError(f'{exc}; nothing was installed') from None
        except download.PartLocked as exc:
            raise FetchError(str(exc)) from None
        except download.DownloadError as exc:
            if part.is_file() and part.stat().st_size == 0:
                _remove(part)     # created for this attempt, nothing arrived
            raise FetchError(f'{exc}; {_offline_hint(entry)}') from None
        actual = sha256_of(str(part))
        expected = expected_sha256(entry)
        if expected and actual != expected:
            _remove(part)
            if transfer.resumed_from and attempt == 1:
                notify(f'{entry.name}: the download resumed from an earlier partial file '
                       'fails its sha256 check; discarded it, downloading from the start')
                continue
            kept = f', the cached {dest} is untouched' if dest.is_file() else ''
            raise CheckpointError(_mismatch(url, entry, expected, actual,
                                            f'the download was deleted{kept}'))
        if not expected:
            try:
                check_loads(part, entry, source=url)
            except CheckpointError as exc:
                _remove(part)
                raise CheckpointError(f'{exc} (the download was deleted)') from None
        break
    installed = _install(part, dest, entry, actual, 'downloaded', notify)
    for folder_ in weights_dirs()[:-1]:
        if (folder_ / entry.checkpoint_file).is_file():
            notify(f'note: {folder_ / entry.checkpoint_file} (EVIT_ROS_WEIGHTS_DIR) is used '
                   f'before the cached copy')
    return installed


def import_file(entry: ModelEntry, source: os.PathLike, notify: Optional[Notify] = None
                ) -> Installed:
    """Install a checkpoint file the user already has into the cache.

    The file is copied next to its destination, the copy is checked (sha256 when one is
    published or recorded, then a strict ``weights_only`` load into the model), and only
    then renamed into place. A model without a known sha256 gets this file's recorded.

    :raises FetchError: when ``source`` is not a readable file.
    :raises CheckpointError: for a sha256 mismatch or a file that does not fit the model.
    """
    notify = notify or (lambda message: None)
    source = Path(source).expanduser()
    if not source.is_file():
        raise FetchError(f'{source} is not a file; give the path of the downloaded '
                         f'{entry.checkpoint_file}')
    if source.stat().st_size > download.MAX_BYTES:
        raise FetchError(f'{source} has {source.stat().st_size} bytes, more than any '
                         f'checkpoint ({download.MAX_BYTES}-byte limit); not installed')
    folder = ensure_cache_dir()
    dest = folder / entry.checkpoint_file
    fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=entry.checkpoint_file + '.',
                                    suffix=PART_SUFFIX)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, 'wb') as out, open(source, 'rb') as handle:
            for block in iter(lambda: handle.read(download.CHUNK), b''):
                digest.update(block)
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
        actual = digest.hexdigest()
        expected = expected_sha256(entry)
        if expected and actual != expected:
            raise CheckpointError(_mismatch(source, entry, expected, actual,
                                            'not installed'))
        check_loads(tmp, entry, source=str(source))
        return _install(tmp, dest, entry, actual, 'imported', notify)
    except OSError as exc:
        raise FetchError(f'cannot import {source}: {exc.strerror or exc}') from None
    finally:
        _remove(tmp)


# -- what is on this machine ---------------------------------------------------------------

@dataclass
class WeightsStatus:
    """Which checkpoint file a model would use, and whether its sha256 checks out."""

    entry: ModelEntry
    path: Optional[Path]    # None: not on this machine
    where: str              # 'weights dir', 'cache' or 'missing'
    size: Optional[int]
    sha256: str             # e.g. 'verified (published)', 'MISMATCH (recorded)', 'unknown'


def weights_status(entry: ModelEntry, check: bool = True) -> WeightsStatus:
    """Describe the checkpoint :func:`find_checkpoint` would pick for a model.

    :param check: hash the file to compare it with the published or recorded sha256.
    """
    source = hash_source(entry)
    label = {'published': 'published', 'recorded': 'recorded on first use',
             'unknown': 'unknown'}[source]
    try:
        path = find_checkpoint(entry)
    except WeightsNotFound:
        return WeightsStatus(entry, None, 'missing', None, label)
    where = 'cache' if path.parent == cache_dir() else 'weights dir'
    if source == 'unknown':
        state = 'unknown (none published or recorded)'
    elif not check:
        state = f'not checked ({label})'
    else:
        state = ('verified' if sha256_of(str(path)) == expected_sha256(entry)
                 else 'MISMATCH') + f' ({label})'
    return WeightsStatus(entry, path, where, path.stat().st_size, state)
