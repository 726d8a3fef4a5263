"""The validated engine cache: one serialized engine per build key, checked before every load.

An engine only runs where it was built: the same TensorRT version, GPU and settings. Each
engine file ``<model>_<H>x<W>_<precision>_<digest>.engine`` has a JSON sidecar holding the
full :class:`EngineKey` it was built for, the engine's own size and sha256, and what the
builder reports about the build (``build``: the typing, the ONNX artifact and its CPU checks).
On TensorRT >= 10 the precision's ONNX artifact sits beside the engine (``<stem>.onnx`` and
its sidecar ``<stem>.onnx.json``). On load the
key, size, hash and deserialisation are all checked; any failure logs ONE line saying why and
rebuilds the engine instead of crashing. Writes are atomic (temp file + rename), the folder
is private (0o700) and a lock file keeps two processes from building the same engine at once.

The object that builds and deserialises engines is passed in (:class:`EngineBuilder`), so the
cache logic runs and is tested without TensorRT; the real builder lives in
:mod:`evit_ros.runtime.backends.tensorrt_backend`.
"""

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path
import re
import tempfile
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

import torch
from torch import nn

from evit_ros import __version__
from evit_ros.download import sha256_of

try:  # POSIX only; without it concurrent builds are not serialised, nothing else changes.
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

LOG = logging.getLogger('evit_ros.runtime')

#: environment variable naming the engine folder.
ENGINE_DIR_ENV = 'EVIT_ROS_ENGINE_DIR'
#: version of the key and sidecar layout; a change makes every older engine rebuild.
#: 2: the workspace left the key (it limits the build, not what the engine computes).
KEY_FORMAT = 2
#: seconds between "still building" log lines.
HEARTBEAT_S = 5.0
ENGINE_SUFFIX = '.engine'
SIDECAR_SUFFIX = '.json'
CALIBRATION_SUFFIX = '.calib'
ARTIFACT_SUFFIX = '.onnx'
LOCK_SUFFIX = '.lock'
# Only files named like this are ever listed or removed, whatever folder the user points at.
_STEM = r'[A-Za-z0-9.+-]+_\d+x\d+_(?:fp32|fp16|int8)_[0-9a-f]{16}'
_OWN_FILE = re.compile(rf'^(?:{_STEM})(?:\.engine|\.json|\.calib|\.lock|\.onnx|\.onnx\.json)$')
_OWN_TEMP = re.compile(rf'^\.(?:{_STEM})\.(?:engine|json|calib|onnx|onnx\.json)\..*\.tmp$')


class EngineCacheError(RuntimeError):
    """The engine folder cannot be used, or a freshly built engine does not load."""


@dataclasses.dataclass(frozen=True)
class EngineKey:
    """Everything that shapes a built engine; any change means another engine."""

    model: str
    weights_sha256: str
    input_shape: Tuple[int, int, int, int]
    precision: str
    calibration_sha256: Optional[str]
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    build_settings: Tuple[Tuple[str, str], ...] = ()

    def to_dict(self) -> Dict[str, Any]:
        """Return the key as JSON-ready data (the sidecar's ``key``)."""
        data = dataclasses.asdict(self)
        data['input_shape'] = list(self.input_shape)
        data['build_settings'] = dict(self.build_settings)
        return data

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> 'EngineKey':
        """Rebuild a key from :meth:`to_dict` output.

        :raises ValueError: when a field is missing, unknown or of the wrong type.
        """
        if not isinstance(data, dict):
            raise ValueError('key is not an object')
        names = {f.name for f in dataclasses.fields(cls)}
        if set(data) != names:
            raise ValueError(f'key fields {sorted(data)} != {sorted(names)}')
        try:
            values = dict(data)
            values['input_shape'] = tuple(int(v) for v in data['input_shape'])
            values['build_settings'] = tuple(
                sorted((str(k), str(v)) for k, v in dict(data['build_settings']).items()))
        except (TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f'malformed key ({exc})') from None
        return cls(**values)

    def digest(self) -> str:
        """Return the sha256 of the canonical JSON form of this key."""
        text = json.dumps({'format': KEY_FORMAT, **self.to_dict()}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def stem(self) -> str:
        """File name without suffix: model, size, precision and the first 16 digest digits."""
        model = re.sub(r'[^A-Za-z0-9.+-]', '-', self.model) or 'model'
        height, width = self.input_shape[-2:]
        return f'{model}_{height}x{width}_{self.precision}_{self.digest()[:16]}'

    def differences(self, other: 'EngineKey') -> List[str]:
        """Return ``field: cached X, now Y`` for each field where ``other`` differs."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [f'{name}: cached {theirs[name]!r}, now {mine[name]!r}'
                for name in mine if mine[name] != theirs[name]]


class EngineBuilder:
    """What the cache needs from an engine toolchain (TensorRT in production).

    Subclass it or pass any object with these methods.
    """

    def build(self, key: EngineKey) -> bytes:
        """Build and return the serialized engine for ``key``."""
        raise NotImplementedError

    def deserialize(self, data: bytes) -> Any:
        """Turn serialized bytes into a runnable engine; raise (or return None) on failure."""
        raise NotImplementedError

    def progress(self) -> str:
        """Return a few words on the build's current phase, for the heartbeat log."""
        return ''

    def provenance(self) -> Dict[str, Any]:
        """Return what the sidecar records about the last build (``build``), JSON-ready."""
        return {}


@dataclasses.dataclass
class CachedEngine:
    """An engine ready to run and where it came from."""

    engine: Any
    path: Path
    built: bool
    #: why it was (re)built: '' when loaded from the cache.
    reason: str = ''


@dataclasses.dataclass
class EngineRecord:
    """One engine in the folder, as ``evit-ros engines list`` shows it."""

    path: Path
    status: str            # 'ok', or what is wrong with it
    size_bytes: int
    key: Optional[EngineKey] = None
    built_at: str = ''
    #: the sidecar's ``build`` record (typing, artifact and its CPU checks), if any.
    build: Dict[str, Any] = dataclasses.field(default_factory=dict)


def default_engine_dir() -> Path:
    """Return the engine folder to use when none is given.

    ``$EVIT_ROS_ENGINE_DIR``, else the source tree's ``engines/`` when writable, else
    ``engines`` under the user cache (``$EVIT_ROS_CACHE``, default ``~/.cache/evit_ros``).
    """
    env = os.environ.get(ENGINE_DIR_ENV)
    if env:
        return Path(env).expanduser().resolve()
    source = Path(__file__).resolve().parents[2] / 'engines'
    if (source / 'README.md').is_file() and os.access(source, os.W_OK | os.X_OK):
        return source
    from evit_ros.weights import cache_dir
    return cache_dir().parent / 'engines'


def prepare_engine_dir(directory: Union[str, os.PathLike]) -> Path:
    """Create ``directory`` with mode 0o700 if needed and return it.

    An existing folder that other users can write to is tightened to 0o700 when it is ours:
    deserialising an engine trusts its contents.

    :raises EngineCacheError: when it cannot be created or is writable by others.
    """
    path = Path(directory).expanduser()
    try:
        created = not path.exists()
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if created:
            os.chmod(path, 0o700)
        mode = path.stat().st_mode
        if mode & 0o022:
            if path.stat().st_uid != os.getuid():
                raise EngineCacheError(
                    f'engine folder {path} is writable by other users and not ours to '
                    f'tighten; choose a private one with --engine-dir or {ENGINE_DIR_ENV}')
            os.chmod(path, 0o700)
    except OSError as exc:
        raise EngineCacheError(
            f'cannot use engine folder {path} ({exc.strerror or exc}); choose a writable one '
            f'with --engine-dir or {ENGINE_DIR_ENV}') from None
    return path


def state_dict_sha256(model: nn.Module) -> str:
    """Return a sha256 over every state-dict entry's name, dtype, shape and bytes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f'{name}|{tensor.dtype}|{tuple(tensor.shape)}|'.encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def weights_sha256(model: nn.Module, entry=None, weights=None) -> str:
    """Fingerprint the weights an engine is built from.

    The official checkpoint's (or a checkpoint file's) sha256 when ``model`` came from the
    registry ``entry`` with those ``weights``; a hash of the state dict otherwise (custom or
    random weights, a module passed in).
    """
    if entry is not None and weights is not None:
        if str(weights) == 'official':
            from evit_ros.weights import expected_sha256, find_checkpoint
            return expected_sha256(entry) or sha256_of(str(find_checkpoint(entry)))
        if os.path.isfile(str(weights)):
            return sha256_of(str(weights))
    return 'state-dict:' + state_dict_sha256(model)


class BuildHeartbeat:
    """Log ``building <what>: N s elapsed`` every ``interval_s`` until the block ends.

    :param describe: returns the current build phase (may be ``''``), read at each beat.
    """

    def __init__(self, what: str, interval_s: float = HEARTBEAT_S,
                 describe: Optional[Callable[[], str]] = None):
        self.what = what
        self.interval_s = interval_s
        self.describe = describe or (lambda: '')
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name='engine-build-heartbeat',
                                        daemon=True)
        self._start = 0.0

    def __enter__(self) -> 'BuildHeartbeat':
        self._start = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                phase = self.describe()
            except Exception:  # a progress callback must never break the build
                phase = ''
            LOG.info('building %s: %.0f s elapsed%s', self.what,
                     time.monotonic() - self._start, f' ({phase})' if phase else '')


class EngineCache:
    """Engines on disk, keyed by :class:`EngineKey` and validated on every load.

    :param directory: engine folder; default :func:`default_engine_dir`.
    :param heartbeat_s: seconds between progress lines while building.
    """

    def __init__(self, directory: Union[None, str, os.PathLike] = None,
                 heartbeat_s: float = HEARTBEAT_S):
        self.directory = Path(directory).expanduser() if directory else default_engine_dir()
        self.heartbeat_s = heartbeat_s

    def engine_path(self, key: EngineKey) -> Path:
        """Return where the engine for ``key`` lives."""
        return self.directory / (key.stem + ENGINE_SUFFIX)

    def sidecar_path(self, key: EngineKey) -> Path:
        """Return where the sidecar of ``key``'s engine lives."""
        return self.directory / (key.stem + SIDECAR_SUFFIX)

    def calibration_path(self, key: EngineKey) -> Path:
        """Return where the int8 calibration cache for ``key`` lives (beside the engine)."""
        return self.directory / (key.stem + CALIBRATION_SUFFIX)

    def artifact_path(self, key: EngineKey) -> Path:
        """Return where the ONNX artifact ``key``'s engine is compiled from lives."""
        return self.directory / (key.stem + ARTIFACT_SUFFIX)

    def load(self, key: EngineKey, builder: EngineBuilder, rebuild: bool = False
             ) -> CachedEngine:
        """Return the engine for ``key``: the cached one if it checks out, else a new build.

        A cached engine that fails any check is rebuilt after ONE warning line saying why.

        :param builder: builds and deserialises engines (TensorRT, or a stand-in in tests).
        :param rebuild: build even if a valid engine is cached.
        :raises EngineCacheError: for an unusable folder, or when a fresh engine won't load.
        """
        prepare_engine_dir(self.directory)
        path = self.engine_path(key)
        with self._lock(key):
            if rebuild:
                reason = 'a rebuild was requested'
                LOG.info('engine cache: rebuilding %s: %s', path.name, reason)
            else:
                data, reason = self._read_valid(key)
                if data is not None:
                    engine, reason = _deserialize(builder, data)
                    if engine is not None:
                        LOG.info('engine cache: loaded %s', path)
                        return CachedEngine(engine, path, built=False)
                if reason:
                    LOG.warning('engine cache: rebuilding %s: %s', path.name, reason)
                else:
                    reason = 'no cached engine' + self._nearest_hint(key)
                    LOG.info('engine cache: building %s: %s', path.name, reason)
            data = self._build(key, builder)
            engine, problem = _deserialize(builder, data)
            if engine is None:
                raise EngineCacheError(f'the engine just built ({path}) does not load: '
                                       f'{problem}')
            return CachedEngine(engine, path, built=True, reason=reason)

    def records(self) -> List[EngineRecord]:
        """Return every engine in the folder with its state (``ok`` or what is wrong)."""
        if not self.directory.is_dir():
            return []
        records = []
        for path in sorted(self.directory.glob('*' + ENGINE_SUFFIX)):
            if not _OWN_FILE.match(path.name):
                continue
            stem = path.name[:-len(ENGINE_SUFFIX)]
            sidecar, problem = _read_sidecar(self.directory / (stem + SIDECAR_SUFFIX))
            key = None
            if sidecar is not None:
                key, problem = _sidecar_key(sidecar)
            status = problem or _check_engine_file(path, sidecar)[1] or 'ok'
            build = (sidecar or {}).get('build')
            records.append(EngineRecord(path, status, path.stat().st_size, key,
                                        str((sidecar or {}).get('built_at', '')),
                                        build if isinstance(build, dict) else {}))
        return records

    def clean(self) -> List[Path]:
        """Delete every engine, sidecar, calibration cache, lock and temp file of ours.

        Files not named like ours are left alone, whatever folder this is.
        """
        if not self.directory.is_dir():
            return []
        removed = []
        for path in sorted(self.directory.iterdir()):
            if path.is_file() and (_OWN_FILE.match(path.name) or _OWN_TEMP.match(path.name)):
                path.unlink()
                removed.append(path)
        return removed

    # -- internals ---------------------------------------------------------------------

    def _read_valid(self, key: EngineKey) -> Tuple[Optional[bytes], str]:
        """Return ``(engine bytes, '')`` when the cached engine checks out, else the reason."""
        path = self.engine_path(key)
        if not path.exists():
            return None, ''
        sidecar, problem = _read_sidecar(self.sidecar_path(key))
        if problem:
            return None, problem
        cached_key, problem = _sidecar_key(sidecar)
        if problem:
            return None, problem
        if cached_key != key:
            return None, ('it was built for another setup: '
                          + '; '.join(key.differences(cached_key)))
        return _check_engine_file(path, sidecar)

    def _build(self, key: EngineKey, builder: EngineBuilder) -> bytes:
        path = self.engine_path(key)
        start = time.monotonic()
        describe = getattr(builder, 'progress', None)
        with BuildHeartbeat(path.name, self.heartbeat_s, describe):
            data = builder.build(key)
        if not isinstance(data, (bytes, bytearray, memoryview)) or not len(data):
            raise EngineCacheError(f'building {path.name} produced no engine')
        data = bytes(data)
        seconds = time.monotonic() - start
        write_atomic(path, data)
        sidecar = {
            'format': KEY_FORMAT,
            'key': key.to_dict(),
            'engine_file': path.name,
            'engine_bytes': len(data),
            'engine_sha256': hashlib.sha256(data).hexdigest(),
            'built_at': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
            'build_seconds': round(seconds, 1),
            'evit_ros_version': __version__,
            'build': _provenance(builder),
        }
        # The sidecar goes last: an engine without one is never trusted.
        write_atomic(self.sidecar_path(key), (json.dumps(sidecar, indent=2) + '\n').encode())
        LOG.info('engine cache: built %s in %.0f s (%.1f MB)', path, seconds, len(data) / 1e6)
        return data

    def _nearest_hint(self, key: EngineKey) -> str:
        """Say how a cached engine for the same model, size and precision differs, if any."""
        prefix = key.stem[:-16]
        for path in sorted(self.directory.glob(prefix + '*' + SIDECAR_SUFFIX)):
            sidecar, _ = _read_sidecar(path)
            other = _sidecar_key(sidecar)[0] if sidecar is not None else None
            if other is not None and other != key:
                return (f' (the cached {path.stem}{ENGINE_SUFFIX} differs: '
                        + '; '.join(key.differences(other)) + ')')
        return ''

    @contextlib.contextmanager
    def _lock(self, key: EngineKey) -> Iterator[None]:
        if fcntl is None:
            yield
            return
        lock_path = self.directory / (key.stem + LOCK_SUFFIX)
        handle = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                LOG.info('engine cache: waiting for another process building %s', key.stem)
                fcntl.flock(handle, fcntl.LOCK_EX)
            yield
        finally:
            os.close(handle)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a private temp file and an atomic rename."""
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
    try:
        with os.fdopen(handle, 'wb') as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _read_sidecar(path: Path) -> Tuple[Optional[dict], str]:
    if not path.exists():
        return None, f'its sidecar {path.name} is missing'
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return None, f'its sidecar {path.name} is unreadable ({type(exc).__name__}: {exc})'
    if not isinstance(data, dict):
        return None, f'its sidecar {path.name} is not a JSON object'
    if data.get('format') != KEY_FORMAT:
        return None, (f'its sidecar has format {data.get("format")!r}, this version '
                      f'writes {KEY_FORMAT}')
    return data, ''


def _sidecar_key(sidecar: dict) -> Tuple[Optional[EngineKey], str]:
    try:
        return EngineKey.from_dict(sidecar.get('key')), ''
    except ValueError as exc:
        return None, f'its sidecar key is unusable ({exc})'


def _check_engine_file(path: Path, sidecar: Optional[dict]) -> Tuple[Optional[bytes], str]:
    """Return the engine's bytes if size and sha256 match the sidecar, else the reason."""
    if sidecar is None:
        return None, 'its sidecar is missing'
    expected_size = sidecar.get('engine_bytes')
    expected_sha = sidecar.get('engine_sha256')
    if not isinstance(expected_size, int) or not isinstance(expected_sha, str):
        return None, 'its sidecar lacks the engine size or sha256'
    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, f'the engine file is unreadable ({exc.strerror or exc})'
    if len(data) < expected_size:
        return None, f'the engine file is truncated ({len(data)} of {expected_size} bytes)'
    if len(data) != expected_size:
        return None, f'the engine file has {len(data)} bytes, its sidecar says {expected_size}'
    if hashlib.sha256(data).hexdigest() != expected_sha:
        return None, 'the engine file is corrupt (its sha256 does not match the sidecar)'
    return data, ''


def _provenance(builder: EngineBuilder) -> Dict[str, Any]:
    report = getattr(builder, 'provenance', None)
    data = report() if callable(report) else {}
    return data if isinstance(data, dict) else {}


def load_engine_file(path: Union[str, os.PathLike], builder: EngineBuilder,
                     environment: Optional[Dict[str, str]] = None) -> Tuple[Any, dict]:
    """Deserialise a prebuilt engine file as it is: no build, no calibration.

    When the engine has our sidecar (``<stem>.json`` beside it), its size and sha256 are
    checked, and its TensorRT version and GPU against ``environment`` (``tensorrt_version``,
    ``gpu_name``, ``compute_capability``), so a foreign engine is named as such.

    :returns: the engine and the sidecar (``{}`` when there is none).
    :raises EngineCacheError: one line naming the file and what is wrong with it.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise EngineCacheError(f'engine file {path} does not exist; build one with '
                               '`evit-ros build-engine`')
    sidecar_path = path.with_suffix(SIDECAR_SUFFIX)
    sidecar: dict = {}
    if sidecar_path.is_file():
        read, problem = _read_sidecar(sidecar_path)
        if problem:
            raise EngineCacheError(f'engine {path}: {problem}')
        sidecar = read or {}
        data, problem = _check_engine_file(path, sidecar)
        if problem:
            raise EngineCacheError(f'engine {path}: {problem}')
        key, problem = _sidecar_key(sidecar)
        if problem:
            raise EngineCacheError(f'engine {path}: {problem}')
        built_for = key.to_dict()
        foreign = [f'{name} {built_for[name]!r}, here {value!r}'
                   for name, value in (environment or {}).items()
                   if name in built_for and built_for[name] != value]
        if foreign:
            raise EngineCacheError(f'engine {path} was built for another setup ('
                                   + '; '.join(foreign) + '); build it again here with '
                                   '`evit-ros build-engine`')
    else:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise EngineCacheError(f'engine file {path} is unreadable '
                                   f'({exc.strerror or exc})') from None
    engine, problem = _deserialize(builder, data)
    if engine is None:
        raise EngineCacheError(f'engine {path}: {problem}; build it again here with '
                               '`evit-ros build-engine`')
    LOG.info('engine: loaded %s as it is (no build)', path)
    return engine, sidecar


def _deserialize(builder: EngineBuilder, data: bytes) -> Tuple[Any, str]:
    try:
        engine = builder.deserialize(data)
    except Exception as exc:  # TensorRT raises assorted types on foreign or damaged engines
        text = str(exc).strip().splitlines()
        return None, f'deserialising it failed ({type(exc).__name__}: {text[0] if text else ""})'
    if engine is None:
        return None, 'deserialising it failed (the runtime returned no engine)'
    return engine, ''
