"""Bounded, resumable HTTPS downloads into a ``.part`` file (standard library only).

The caller owns the ``.part`` file's fate: this module fills it (resuming with an HTTP
``Range`` request when it already holds bytes) and says how the transfer ended; checking
the result and moving it into place is the caller's job.
"""

import fcntl
import hashlib
import http.client
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

#: Hosts that may be reached over plain http (tests serve files from a local server).
LOOPBACK_HOSTS = frozenset({'127.0.0.1', 'localhost', '::1'})
#: No checkpoint of the release comes near this; a larger response is refused.
MAX_BYTES = 1 << 30
CHUNK = 1 << 20
TIMEOUT_S = 30.0
USER_AGENT = 'evit-ros-weights/1'

_CONTENT_RANGE = re.compile(r'bytes\s+(\d+)-(\d+)/(\d+|\*)')

#: ``progress(done_bytes, total_bytes_or_None)``, called after every chunk.
Progress = Callable[[int, Optional[int]], None]


class DownloadError(Exception):
    """A download that did not produce a complete file; the message is one line."""


class UnsafeURL(DownloadError):
    """A URL (or a redirect target) that is not https, nor http to a loopback host."""


class NetworkError(DownloadError):
    """The server could not be reached or refused the request; nothing was received."""


class Interrupted(DownloadError):
    """The transfer stopped midway; the bytes received so far stay in the ``.part`` file."""


class BadResponse(DownloadError):
    """The server's answer cannot be the file: too large, or not the announced size."""


class PartLocked(DownloadError):
    """Another process is downloading into the same ``.part`` file."""


@dataclass
class Transfer:
    """How a download ended: the final size and the offset it resumed from (0: fresh)."""

    size: int
    resumed_from: int


def private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) readable by this user only (0o700).

    For the caches of weights and data sets; an existing folder is left as it is.
    """
    if path.is_dir():
        return
    private_dir(path.parent)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        return
    os.chmod(path, 0o700)   # mkdir's mode is filtered by the umask


def check_url(url: str) -> str:
    """Return ``url`` if it may be fetched: https, or plain http to a loopback host.

    :raises UnsafeURL: for any other scheme or host.
    """
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == 'https' and parts.hostname:
        return url
    if scheme == 'http' and parts.hostname in LOOPBACK_HOSTS:
        return url
    raise UnsafeURL(f'refusing to download {url}: only https:// URLs are accepted '
                    f'(plain http only from {", ".join(sorted(LOOPBACK_HOSTS))})')


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to URLs that pass :func:`check_url` (no https→http downgrade)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        check_url(urllib.parse.urljoin(req.full_url, newurl))
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener(url: str) -> urllib.request.OpenerDirector:
    handlers = [_CheckedRedirects()]
    if urllib.parse.urlsplit(url).hostname in LOOPBACK_HOSTS:
        # A proxy from the environment must not see (or break) loopback traffic.
        handlers.append(urllib.request.ProxyHandler({}))
    return urllib.request.build_opener(*handlers)


def _first_line(exc: BaseException) -> str:
    reason = getattr(exc, 'reason', None)
    text = str(reason if reason is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _open(url: str, offset: int, timeout: float):
    headers = {'User-Agent': USER_AGENT, 'Accept-Encoding': 'identity'}
    if offset:
        headers['Range'] = f'bytes={offset}-'
    request = urllib.request.Request(url, headers=headers)
    try:
        return _opener(url).open(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:
            return None     # the part is at least as long as the file: start over
        raise NetworkError(f'{url} answered HTTP {exc.code} {exc.reason}') from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        raise NetworkError(f'cannot reach {url} ({_first_line(exc)})') from None


def _body_start(response, url: str):
    """Return (start, total): the offset the body begins at and the file's full size."""
    if response.status == 206:
        match = _CONTENT_RANGE.match(response.headers.get('Content-Range', ''))
        if not match:
            raise BadResponse(f'{url} sent a partial answer without a valid Content-Range')
        return int(match.group(1)), (int(match.group(3)) if match.group(3) != '*' else None)
    length = (response.headers.get('Content-Length') or '').strip()
    return 0, (int(length) if length.isdigit() else None)


def _open_at(url: str, offset: int, timeout: float):
    """Open ``url`` to continue at ``offset``; return (response, start, total).

    ``start`` is ``offset`` when the server honoured the range, else 0 (the whole file).
    """
    response = _open(url, offset, timeout) if offset else None
    if response is not None:
        start, total = _body_start(response, url)
        if start in (0, offset):
            return response, start, total
        response.close()    # a range we did not ask for: fetch the whole file instead
    response = _open(url, 0, timeout)
    start, total = _body_start(response, url)
    if start != 0:
        response.close()
        raise BadResponse(f'{url} answered a whole-file request from offset {start}')
    return response, 0, total


def download(url: str, part: Path, max_bytes: int = MAX_BYTES,
             expected_size: Optional[int] = None, timeout: float = TIMEOUT_S,
             progress: Optional[Progress] = None) -> Transfer:
    """Fill ``part`` with the body of ``url``, resuming from the bytes it already holds.

    A server that ignores the ``Range`` request (or cannot satisfy it) gets the part
    rewritten from the start. The file is flushed and fsync'ed before returning.

    :param max_bytes: refuse a response announcing or delivering more than this.
    :param expected_size: refuse a file whose announced size differs (when known).
    :raises UnsafeURL: before any traffic, for a URL that is not https (or loopback http).
    :raises NetworkError: when nothing could be received.
    :raises Interrupted: when the transfer stopped midway; ``part`` keeps what arrived.
    :raises BadResponse: for an oversized or wrongly sized answer.
    :raises PartLocked: when another process downloads into ``part``.
    """
    check_url(url)
    fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o600)
    with os.fdopen(fd, 'r+b') as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PartLocked(f'another download is writing {part}; wait for it to end') from None
        response, start, total = _open_at(url, os.fstat(handle.fileno()).st_size, timeout)
        with response:
            handle.seek(start)
            handle.truncate()
            if total is not None and total > max_bytes:
                raise BadResponse(f'{url} announces {total} bytes, more than the '
                                  f'{max_bytes}-byte limit; refusing it')
            if total is not None and expected_size is not None and total != expected_size:
                raise BadResponse(f'{url} announces {total} bytes but the published file '
                                  f'has {expected_size}; refusing it')
            limit = max_bytes if total is None else min(total, max_bytes)
            done = start
            try:
                while True:
                    block = response.read(CHUNK)
                    if not block:
                        break
                    if done + len(block) > limit:
                        raise BadResponse(f'{url} sent more than {limit} bytes; refusing it')
                    handle.write(block)
                    done += len(block)
                    if progress:
                        progress(done, total)
            except (http.client.HTTPException, OSError) as exc:
                handle.flush()
                os.fsync(handle.fileno())
                raise Interrupted(f'download of {url} stopped after {done} bytes '
                                  f'({_first_line(exc)})') from None
            handle.flush()
            os.fsync(handle.fileno())
    if total is not None and done < total:
        raise Interrupted(f'download of {url} stopped after {done} of {total} bytes '
                          '(connection closed)')
    if done == 0:
        raise BadResponse(f'{url} sent an empty file')
    return Transfer(done, start)


def sha256_of(path, chunk: int = 1 << 20) -> str:
    """Return the hex sha256 of a file (weights, data sets, artifacts)."""
    digest = hashlib.sha256()
    with open(path, 'rb') as handle:
        for block in iter(lambda: handle.read(chunk), b''):
            digest.update(block)
    return digest.hexdigest()


def fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (best effort where unsupported)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
