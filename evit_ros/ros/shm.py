"""The Fast DDS shared-memory segments a process owns, and their removal once it is killed.

Each Fast DDS participant keeps its outgoing samples in a segment ``/dev/shm/fastdds_<id>``
(64 MB with this package's large-image profile) and holds an exclusive ``flock`` on the
file ``fastdds_<id>_el`` while it lives. A participant deleted normally removes both; a
process killed with SIGKILL cannot, and the segment stays in ``/dev/shm`` (memory, on
Linux) until somebody removes it. The lock tells an abandoned segment from a live one.
"""

import fcntl
import os
from pathlib import Path
from typing import List

SHM_DIR = Path('/dev/shm')
PREFIX = 'fastdds_'
LOCK_SUFFIX = '_el'


def _locked_files(pid: int) -> set:
    """Return ``(major, minor, inode)`` of the files ``pid`` holds a ``flock`` on."""
    files = set()
    try:
        with open('/proc/locks') as locks:
            for line in locks:
                fields = line.split()
                # "1: FLOCK  ADVISORY  WRITE 8002 00:1b:73620 0 EOF" (device in hex)
                if len(fields) >= 6 and fields[1] == 'FLOCK' and fields[4] == str(pid):
                    major, minor, inode = fields[5].split(':')
                    files.add((int(major, 16), int(minor, 16), int(inode)))
    except (OSError, ValueError):
        pass
    return files


def owned_segments(pid: int, shm_dir: Path = SHM_DIR) -> List[Path]:
    """Return the Fast DDS segments (ports excluded) whose lock ``pid`` holds now.

    Empty where ``/dev/shm`` or ``/proc/locks`` does not exist (not Linux).
    """
    locked = _locked_files(pid)
    if not locked:
        return []
    owned = []
    try:
        entries = list(os.scandir(shm_dir))
    except OSError:
        return []
    for entry in entries:
        name = entry.name
        if not (name.startswith(PREFIX) and name.endswith(LOCK_SUFFIX)):
            continue
        segment = name[:-len(LOCK_SUFFIX)]
        if segment.startswith(PREFIX + 'port'):
            continue  # ports are shared by a domain's participants; Fast DDS reclaims them
        try:
            stat = entry.stat()
        except OSError:
            continue
        if (os.major(stat.st_dev), os.minor(stat.st_dev), stat.st_ino) in locked:
            owned.append(Path(shm_dir) / segment)
    return sorted(owned)


def remove_abandoned(segments: List[Path]) -> List[Path]:
    """Remove each segment (and its lock file) whose owner is gone; return those removed.

    A segment is abandoned when its lock file can be locked: no live process holds it.
    One that is still locked, or already gone, is left as it is.
    """
    removed = []
    for segment in segments:
        lock_path = Path(f'{segment}{LOCK_SUFFIX}')
        try:
            fd = os.open(lock_path, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # a live participant holds it
        try:
            for path in (segment, lock_path):
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass
            removed.append(segment)
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


__all__ = ['owned_segments', 'remove_abandoned']
