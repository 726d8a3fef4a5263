"""TensorRT backend: a version-aware compiler and executor of the ONNX artifact.

How an engine gets its precision depends on the TensorRT version (:func:`typing_of`):

* **TensorRT >= 10** (10.x, 11.x): the network is *strongly typed*
  (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``), parsed from the precision's ONNX
  artifact (:func:`evit_ros.runtime.artifact.export_artifact`): an fp16 graph whose attention
  stays fp32 through its own casts, or an int8 graph with explicit Q/DQ nodes calibrated when
  the artifact was made. No precision flags, no precision constraints, no calibrator: TensorRT
  11 has none of them, and 10 deprecates them. The artifact lies beside the engine.
* **TensorRT 8.5 / 8.6** (JetPack 5.1 / 6.0): the weakly typed path. The fp32 ONNX export is
  parsed, ``BuilderFlag.FP16`` / ``INT8`` choose the precision, int8 calibrates with the
  entropy calibrator, and the LiteMLA attention (found by walking the network,
  :mod:`.attention_layers`) is pinned to fp32 with ``OBEY_PRECISION_CONSTRAINTS``, because in
  fp16 it overflows and gives NaN masks.

Every fp32 build clears ``BuilderFlag.TF32`` (on by default on Ampere and newer, Orin
included), so fp32 means fp32. Engines get an optimization profile over batch
1..``max_batch`` when the graph's batch axis is dynamic. Inference is name-based
(``set_tensor_address``, ``set_input_shape``, ``execute_async_v3``), available from 8.5 on.
Builds use a bounded workspace, log progress at least every 5 s, turn out-of-memory failures
into an actionable message, and land in the validated
:class:`~evit_ros.runtime.engine_cache.EngineCache`; a prebuilt engine file (``engine``)
runs as it is.

All TensorRT access goes through the ``trt`` module object handed around, and every branch
on the version reads ``trt.__version__`` only, so a stand-in module claiming a version drives
the same code (:meth:`TensorRTBackend.with_toolchain`). TensorRT and a CUDA binding
(cuda-python or pycuda) are imported only when this backend is built; without them it raises
:class:`~evit_ros.runtime.backends.BackendUnavailable`.
"""

import inspect
import json
import logging
import os
from pathlib import Path
import re
import shutil
import tempfile
import threading
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from evit_ros.runtime.backends import Backend, BackendUnavailable
from evit_ros.runtime.backends.attention_layers import attention_regions, trt_network_nodes
from evit_ros.runtime.engine_cache import (
    EngineBuilder, EngineCache, EngineCacheError, EngineKey, load_engine_file, weights_sha256,
    write_atomic)

LOG = logging.getLogger('evit_ros.runtime')

PRECISIONS = ('fp32', 'fp16', 'int8')
DEFAULT_WORKSPACE_MB = 1024
#: TensorRT releases this backend supports: (major, minor), minor ``None`` for any.
SUPPORTED = ((8, 5), (8, 6), (10, None), (11, None))
SUPPORTED_TEXT = '8.5, 8.6, 10.x, 11.x'
#: first major version whose networks are built strongly typed from the artifact.
STRONG_TYPING_MAJOR = 10
#: bump when the build recipe changes (export, pinning, flags): old engines then rebuild.
BUILD_RECIPE = '2'
TRT_MISSING = ('TensorRT is not installed here (it needs an NVIDIA GPU; on a Jetson it comes '
               'with JetPack)')
_OOM = re.compile(r'out of memory|outofmemory|cudaErrorMemoryAllocation|bad_alloc|'
                  r'failed to allocate|insufficient memory|requested amount of gpu memory',
                  re.IGNORECASE)
_NO_TACTIC = re.compile(r'could not find any implementation|no implementation', re.IGNORECASE)


class EngineBuildError(BackendUnavailable):
    """TensorRT could not build an engine; the message says what to change."""


def tensorrt_version(trt) -> Tuple[int, int]:
    """Return ``(major, minor)`` of the ``trt`` module, read from ``trt.__version__``."""
    numbers = [int(p) for p in re.findall(r'\d+', str(trt.__version__))[:2]]
    return (numbers + [0, 0])[0], (numbers + [0, 0])[1]


def check_version(trt) -> Tuple[int, int]:
    """Return the version of ``trt`` when this backend supports it.

    :raises BackendUnavailable: one line naming the version found and the supported ones.
    """
    major, minor = tensorrt_version(trt)
    if not any(major == s_major and s_minor in (None, minor) for s_major, s_minor in SUPPORTED):
        raise BackendUnavailable(f'tensorrt: TensorRT {trt.__version__} is not supported; '
                                 f'supported: {SUPPORTED_TEXT}')
    return major, minor


def typing_of(trt) -> str:
    """Return ``strong`` (TensorRT >= 10: precision from the artifact) or ``weak`` (8.x)."""
    return 'strong' if tensorrt_version(trt)[0] >= STRONG_TYPING_MAJOR else 'weak'


def import_tensorrt():
    """Return the ``tensorrt`` module.

    :raises BackendUnavailable: when it is missing, or a version this backend does not
        support (:data:`SUPPORTED_TEXT`).
    """
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailable(f'tensorrt: {TRT_MISSING} ({exc})') from None
    check_version(trt)
    return trt


def tensorrt_missing() -> str:
    """Return why TensorRT cannot be used here, or ``''`` when it imports."""
    try:
        import_tensorrt()
    except BackendUnavailable as exc:
        return str(exc)
    return ''


def engine_key(model_name: str, weights_digest: str, input_size: Tuple[int, int],
               precision: str, environment: Dict[str, str], typing: str, max_batch: int = 1,
               calibration_sha256: Optional[str] = None) -> EngineKey:
    """Return the engine cache key: the one function every build and every lookup uses.

    :param environment: ``tensorrt_version``, ``gpu_name``, ``compute_capability``
        (:meth:`TensorRTBuilder.environment`).
    :param typing: ``strong`` or ``weak`` (:func:`typing_of`).
    """
    return EngineKey(
        model=model_name, weights_sha256=weights_digest,
        input_shape=(int(max_batch), 3, int(input_size[0]), int(input_size[1])),
        precision=precision,
        calibration_sha256=calibration_sha256 if precision == 'int8' else None,
        tensorrt_version=environment['tensorrt_version'], gpu_name=environment['gpu_name'],
        compute_capability=environment['compute_capability'],
        build_settings=(('recipe', BUILD_RECIPE), ('typing', typing)))


def given_artifact(path, precision: str, input_size) -> Tuple[Path, dict]:
    """Return ``(path, sidecar)`` of a prebuilt artifact checked to fit the engine asked for.

    :raises BackendUnavailable: one line when the artifact or its sidecar is unusable, or its
        precision or input size is not the one asked for.
    """
    from evit_ros.runtime.artifact import ArtifactError, read_artifact_info
    path = Path(path).expanduser()
    try:
        info = read_artifact_info(path)
    except ArtifactError as exc:
        raise BackendUnavailable(f'tensorrt: {exc}') from None
    made = (info.get('precision'), tuple(info.get('input_size') or ()))
    asked = (precision, tuple(int(v) for v in input_size))
    if made != asked:
        raise BackendUnavailable(
            f'tensorrt: artifact {path} is {made[0]} at {"x".join(map(str, made[1]))}, not '
            f'the {asked[0]} at {asked[1][0]}x{asked[1][1]} asked for; export it again or '
            'ask for what it is')
    return path, info


def unscored(artifact: Path, checks) -> bool:
    """Return whether labelled ``checks`` were asked for and ``artifact`` has no mIoU yet."""
    if checks is None or getattr(checks, 'labelled', None) is None or not artifact.is_file():
        return False
    from evit_ros.runtime.artifact import sidecar_path
    try:
        info = json.loads(sidecar_path(artifact).read_text())
        return (info.get('checks') or {}).get('camvid_miou') is None
    except (OSError, ValueError, AttributeError):
        return True


def _sidecar_sha256(side: Path) -> Optional[str]:
    try:
        return json.loads(side.read_text()).get('sha256')
    except (OSError, ValueError, AttributeError):
        return None


def explain_build_failure(messages: Sequence[str], workspace_mb: int) -> str:
    """Turn TensorRT's error messages from a failed build into one actionable line."""
    text = ' | '.join(m.strip() for m in messages if m and m.strip())
    said = f' TensorRT said: {text[:400]}' if text else ''
    if _OOM.search(text):
        return (f'tensorrt: the engine build ran out of memory (workspace {workspace_mb} MiB). '
                f'Build ahead of time with `evit-ros build-engine` while nothing else uses '
                f'the GPU (on a Jetson also stop the desktop and add swap), lower '
                f'--workspace-mb (e.g. {max(64, workspace_mb // 2)}) or use a smaller input '
                f'size.{said}')
    if _NO_TACTIC.search(text):
        return (f'tensorrt: no kernel fits the {workspace_mb} MiB workspace; raise '
                f'--workspace-mb (e.g. {workspace_mb * 2}) if memory allows.{said}')
    return f'tensorrt: the engine build failed.{said or " TensorRT gave no reason."}'


def make_logger(trt):
    """Return a ``trt.ILogger`` that forwards to :data:`LOG` (debug) and keeps the errors."""

    class Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: List[str] = []

        def log(self, severity, msg):
            if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                self.errors.append(msg)
            # Our own lines say what failed and why; TensorRT's stay at debug level.
            LOG.debug('tensorrt [%s]: %s', getattr(severity, 'name', severity), msg)

    return Logger()


class BuildStatus:
    """The build's current phase, written by TensorRT's progress monitor, read by the log."""

    def __init__(self):
        self._lock = threading.Lock()
        self._phases: dict = {}

    def start(self, phase: str, steps: int, top_level: bool) -> None:
        """Record that ``phase`` began with ``steps`` steps."""
        with self._lock:
            self._phases[phase] = [0, steps]
        if top_level:
            LOG.info('tensorrt: %s', phase)

    def step(self, phase: str, step: int) -> None:
        """Record that ``phase`` finished step ``step`` (0-based)."""
        with self._lock:
            if phase in self._phases:
                self._phases[phase][0] = step + 1

    def finish(self, phase: str) -> None:
        """Record that ``phase`` ended."""
        with self._lock:
            self._phases.pop(phase, None)

    def text(self) -> str:
        """Return e.g. ``Building engine 3/10, Tactic selection 40/123``."""
        with self._lock:
            return ', '.join(f'{name} {done}/{total}' if total else name
                             for name, (done, total) in self._phases.items())


def make_progress_monitor(trt, status: BuildStatus):
    """Return a ``trt.IProgressMonitor`` feeding ``status`` (TensorRT >= 10), else ``None``."""
    base = getattr(trt, 'IProgressMonitor', None)
    if base is None:
        return None

    class Monitor(base):
        def __init__(self):
            base.__init__(self)

        def phase_start(self, phase_name, parent_phase, num_steps):
            status.start(phase_name, num_steps, parent_phase is None)

        def step_complete(self, phase_name, step):
            status.step(phase_name, step)
            return True  # keep building

        def phase_finish(self, phase_name):
            status.finish(phase_name)

    return Monitor()


def pin_attention_fp32(trt, network, config) -> int:
    """Keep every LiteMLA attention layer of ``network`` (and constants feeding it) in fp32.

    :returns: the number of layers pinned.
    """
    regions = attention_regions(trt_network_nodes(network))
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    by_name = {layer.name: layer for layer in layers}
    producer = {}
    for layer in layers:
        for i in range(layer.num_outputs):
            producer[layer.get_output(i).name] = layer
    targets = {name: by_name[name] for region in regions for name in region.nodes}
    for layer in list(targets.values()):
        for i in range(layer.num_inputs):
            tensor = layer.get_input(i)
            source = producer.get(tensor.name) if tensor is not None else None
            if source is not None and source.type == trt.LayerType.CONSTANT:
                targets[source.name] = source  # e.g. the 1e-15 eps, zero in fp16
    pinned = 0
    for layer in targets.values():
        outputs = [i for i in range(layer.num_outputs)
                   if layer.get_output(i).dtype == trt.DataType.FLOAT]
        if not outputs:
            continue  # shape arithmetic: no float precision to choose
        try:
            layer.precision = trt.DataType.FLOAT
            for i in outputs:
                layer.set_output_type(i, trt.DataType.FLOAT)
        except Exception as exc:  # a layer kind that takes no precision: leave it to TensorRT
            LOG.debug('tensorrt: cannot pin %s to fp32: %s', layer.name, exc)
            continue
        pinned += 1
    config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)  # 8.2+; weak typing only
    if regions:
        LOG.info('tensorrt: keeping %d layers of %d attention blocks in fp32', pinned,
                 len(regions))
    else:
        LOG.warning('tensorrt: found no attention layers to keep in fp32; reduced-precision '
                    'outputs may be NaN')
    return pinned


def make_entropy_calibrator(trt, calibration, cache_path: Path, memory, nbytes: int):
    """Return a ``trt.IInt8EntropyCalibrator2`` over ``calibration`` (one frame per batch).

    The calibration cache is read from / written to ``cache_path``, beside the engine.
    """

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.frames = iter(calibration)
            self.device = memory.alloc(nbytes)
            self.host = memory.host_empty((nbytes // 4,), np.float32)
            self.done = 0

        def get_batch_size(self):
            return 1

        def get_batch(self, names):
            frame = next(self.frames, None)
            if frame is None:
                return None
            self.host[:] = frame.reshape(-1)
            memory.to_device(self.device, self.host)
            memory.synchronize()
            self.done += 1
            if self.done % 20 == 0:
                LOG.info('tensorrt: calibrated on %d of %d frames', self.done, len(calibration))
            return [self.device] * len(names)

        def read_calibration_cache(self):
            if cache_path.is_file():
                LOG.info('tensorrt: reusing int8 calibration cache %s', cache_path)
                return cache_path.read_bytes()
            return None

        def write_calibration_cache(self, cache):
            write_atomic(cache_path, bytes(memoryview(cache)))

    return EntropyCalibrator()


def numpy_dtype(trt, dtype) -> np.dtype:
    """Return the numpy type of an engine I/O tensor (fp32 or fp16 for our engines)."""
    if dtype == trt.DataType.FLOAT:
        return np.dtype(np.float32)
    if dtype == trt.DataType.HALF:
        return np.dtype(np.float16)
    raise BackendUnavailable(f'tensorrt: engine I/O type {dtype} is not fp32/fp16; build the '
                             'engine from an artifact with fp32 input and output')


class TensorRTBuilder(EngineBuilder):
    """Builds engines for the engine cache: from the artifact (>= 10) or with flags (8.x).

    :param artifact_path: where the precision's ONNX artifact is kept (TensorRT >= 10);
        reused when it is already there, so int8 calibration happens once.
    :param calibration: int8 on 8.x: the entropy calibrator's data; on >= 10: the data the
        int8 artifact is made from (only when it does not exist yet).
    :param artifact_checks: what a newly made artifact is checked on (an
        :class:`~evit_ros.runtime.artifact.ArtifactChecks`); ``None``: the default checks
        (finite and agreement on a black and a synthetic frame, no mIoU).
    :param artifact_given: the artifact at ``artifact_path`` was given (``build-engine
        --artifact``): compile it as it is, never make it again.
    """

    def __init__(self, trt, memory, model: nn.Module, input_size: Tuple[int, int],
                 precision: str, workspace_mb: int, max_batch: int = 1,
                 calibration=None, calibration_cache: Optional[Path] = None,
                 artifact_path: Optional[Path] = None, entry=None, artifact_checks=None,
                 artifact_given: bool = False):
        self.trt, self.memory, self.model = trt, memory, model
        self.input_size, self.precision = tuple(input_size), precision
        self.workspace_mb, self.max_batch = int(workspace_mb), int(max_batch)
        self.calibration, self.calibration_cache = calibration, calibration_cache
        self.artifact_path, self.entry = artifact_path, entry
        self.artifact_checks, self.artifact_given = artifact_checks, artifact_given
        #: make the artifact again even when one is there (it was never scored on frames).
        self.remake_artifact = False
        self.typing = typing_of(trt)
        self.logger = make_logger(trt)
        self.status = BuildStatus()
        self.runtime = None
        self.artifact_info: Optional[dict] = None
        #: what the last build set on the builder config (for the log and the tests).
        self.flags: List[str] = []

    def environment(self) -> dict:
        """Return the TensorRT version, GPU name and compute capability for the key."""
        gpu_name, capability = self.memory.device_info()
        return {'tensorrt_version': str(self.trt.__version__), 'gpu_name': gpu_name,
                'compute_capability': capability}

    def progress(self) -> str:
        """Return the build's current phases (TensorRT 10 reports them)."""
        return self.status.text()

    def provenance(self) -> dict:
        """Return the sidecar's ``build`` record: typing, batch range, artifact and checks."""
        record: Dict[str, Any] = {'typing': self.typing, 'max_batch': self.max_batch,
                                  'flags': list(self.flags)}
        if self.artifact_info is not None:
            record['artifact'] = self.artifact_info
        return record

    def build(self, key: EngineKey) -> bytes:
        """Parse the ONNX graph for this TensorRT version and return the serialized engine."""
        trt = self.trt
        strong = self.typing == 'strong'
        onnx_bytes = self._artifact() if strong else self._export()
        builder = trt.Builder(self.logger)
        creation = trt.NetworkDefinitionCreationFlag
        # >= 10: typed from the graph; 8.x: explicit batch (its implicit default is gone later).
        flags = 1 << int(creation.STRONGLY_TYPED if strong else creation.EXPLICIT_BATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse(onnx_bytes):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise EngineBuildError(
                'tensorrt: the ONNX parser rejected the model: ' + ' | '.join(errors[:3])
                + f' (TensorRT {trt.__version__})')
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace_mb << 20)
        self.flags = []
        if self.precision == 'fp32':
            config.clear_flag(trt.BuilderFlag.TF32)  # TF32 is on by default from Ampere
            self.flags.append('-TF32')
        profile = self._batch_profile(builder, network, config)
        keep_alive: List[Any] = []
        if not strong:
            keep_alive += self._weak_precision(builder, network, config, profile, key)
        else:
            monitor = make_progress_monitor(trt, self.status)
            if monitor is not None:
                config.progress_monitor = monitor
                keep_alive.append(monitor)
        LOG.info('tensorrt %s: building a %s engine (%s typing%s)', trt.__version__,
                 self.precision, self.typing,
                 f'; batch 1..{self.max_batch}' if profile is not None else '')
        self.logger.errors.clear()
        try:
            with self.memory.active():
                serialized = builder.build_serialized_network(network, config)
        except (RuntimeError, MemoryError) as exc:
            raise EngineBuildError(explain_build_failure(
                self.logger.errors + [str(exc)], self.workspace_mb)) from None
        finally:
            for calibrator in keep_alive:
                if hasattr(calibrator, 'device'):
                    self.memory.free(calibrator.device)
        if serialized is None:
            raise EngineBuildError(explain_build_failure(self.logger.errors, self.workspace_mb))
        return bytes(memoryview(serialized))

    def _batch_profile(self, builder, network, config):
        """Add an optimization profile over batch 1..max_batch when the batch is dynamic."""
        tensor = network.get_input(0)
        shape = tuple(int(d) for d in tensor.shape)
        if len(shape) != 4:
            raise EngineBuildError(f'tensorrt: the graph input {tensor.name!r} has shape '
                                   f'{shape}; expected Nx3xHxW')
        if -1 not in shape:
            if self.max_batch > shape[0]:
                raise EngineBuildError(
                    f'tensorrt: the ONNX graph has a fixed batch of {shape[0]}, so max_batch '
                    f'{self.max_batch} needs an export with a dynamic batch axis')
            return None
        height, width = (d if d > 0 else s for d, s in zip(shape[2:], self.input_size))
        channels = shape[1] if shape[1] > 0 else 3
        profile = builder.create_optimization_profile()
        profile.set_shape(tensor.name, (1, channels, height, width),
                          (1, channels, height, width),
                          (self.max_batch, channels, height, width))
        config.add_optimization_profile(profile)
        return profile

    def _weak_precision(self, builder, network, config, profile, key) -> List[Any]:
        """Set the 8.x precision: flags, attention pinned to fp32, the int8 calibrator."""
        trt = self.trt
        if self.precision == 'fp32':
            return []
        if not builder.platform_has_fast_fp16:
            LOG.warning('tensorrt: this GPU has no fast fp16; %s may be slow', self.precision)
        config.set_flag(trt.BuilderFlag.FP16)
        self.flags.append('FP16')
        pin_attention_fp32(trt, network, config)
        self.flags.append('OBEY_PRECISION_CONSTRAINTS')
        if self.precision != 'int8':
            return []
        config.set_flag(trt.BuilderFlag.INT8)
        self.flags.append('INT8')
        nbytes = 4 * 3 * self.input_size[0] * self.input_size[1]
        calibrator = make_entropy_calibrator(
            trt, self.calibration, self.calibration_cache or Path(os.devnull), self.memory,
            nbytes)
        config.int8_calibrator = calibrator
        if profile is not None:
            config.set_calibration_profile(profile)
        LOG.info('tensorrt: int8 calibration on %s', self.calibration.describe())
        return [calibrator]

    def deserialize(self, data: bytes):
        """Return the ``ICudaEngine`` for ``data``; raise RuntimeError when TensorRT refuses."""
        self.logger.errors.clear()
        if self.runtime is None:
            self.runtime = self.trt.Runtime(self.logger)
        with self.memory.active():
            engine = self.runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise RuntimeError(self.logger.errors[-1] if self.logger.errors
                               else 'TensorRT returned no engine')
        return engine

    def _artifact(self) -> bytes:
        """Return the precision's ONNX artifact, made (and checked on the CPU) if missing."""
        try:
            from evit_ros.runtime.artifact import export_artifact, read_artifact_info
        except ImportError as exc:
            raise EngineBuildError(f'tensorrt: the ONNX artifact maker is unavailable '
                                   f'({exc})') from None
        path = self.artifact_path
        if path is None:
            raise EngineBuildError('tensorrt: no place for the ONNX artifact was given')
        if (path.is_file() and not self.remake_artifact) or self.artifact_given:
            try:
                self.artifact_info = read_artifact_info(path)
                LOG.info('tensorrt: compiling the existing %s artifact %s', self.precision,
                         path)
                return path.read_bytes()
            except Exception as exc:  # damaged or foreign: make it again
                if self.artifact_given:
                    raise EngineBuildError(f'tensorrt: cannot compile the given artifact '
                                           f'{path}: {exc}') from None
                LOG.warning('tensorrt: cannot reuse the artifact %s (%s); making it again',
                            path, exc)
        LOG.info('tensorrt: making the %s ONNX artifact %s', self.precision, path)
        try:
            self.artifact_info = export_artifact(
                self.model, self.input_size, self.precision, path,
                calibration=self.calibration if self.precision == 'int8' else None,
                entry=self.entry,
                checks=True if self.artifact_checks is None else self.artifact_checks)
        except Exception as exc:  # the artifact's own errors say what failed
            raise EngineBuildError(f'tensorrt: cannot make the {self.precision} ONNX '
                                   f'artifact: {exc}') from None
        return path.read_bytes()

    def _export(self) -> bytes:
        """Return the fp32 export for 8.x, compared with PyTorch when onnxruntime exists."""
        try:
            from evit_ros.runtime.export import export_onnx, ExportError
        except ImportError as exc:
            raise EngineBuildError(f'tensorrt: ONNX export is unavailable ({exc})') from None
        try:
            import onnxruntime  # noqa: F401  (only to know whether the export can be checked)
            check = True
        except ImportError:
            check = False
            LOG.info('tensorrt: onnxruntime is not installed, so the ONNX export is not '
                     'compared with PyTorch before the build')
        with tempfile.TemporaryDirectory(prefix='evit_ros_trt_') as tmp:
            path = os.path.join(tmp, 'model.onnx')
            LOG.info('tensorrt: exporting the model to ONNX at %dx%d', *self.input_size)
            try:
                report = export_onnx(self.model, self.input_size, path, check=check,
                                     dynamic_batch=self.max_batch > 1)
            except ExportError as exc:
                raise EngineBuildError(f'tensorrt: {exc}') from None
            if check:
                LOG.info('tensorrt: ONNX export matches PyTorch (max |dlogit| %.2g)',
                         report.max_abs_diff)
            return Path(path).read_bytes()


class TensorRTBackend(Backend):
    """Run the model as a TensorRT engine on a CUDA GPU.

    :param device: ``cuda`` or ``cuda:N``.
    :param precision: ``fp32``, ``fp16`` or ``int8`` (ignored with ``engine``: the engine's
        own precision, from its sidecar, is what runs and what :attr:`precision` says).
    :param engine_dir: engine folder; default ``$EVIT_ROS_ENGINE_DIR`` or the package's.
    :param workspace_mb: TensorRT builder workspace limit in MiB.
    :param calib: int8 only: a folder of images or a rosbag2 bag to calibrate on (read
        only when the engine or, on TensorRT >= 10, the int8 artifact must be made).
    :param calib_topic: image topic when ``calib`` is a bag with several.
    :param calib_images: most calibration frames used.
    :param rebuild: build even when a valid engine is cached.
    :param entry: the registry entry of ``model`` (names the engine, gives its sha256).
    :param weights: what ``model``'s weights came from (``official`` or a checkpoint path).
    :param engine_cache: an :class:`EngineCache` to use instead of one on ``engine_dir``.
    :param engine: a prebuilt engine file to run as it is: no build, no calibration.
    :param max_batch: largest batch one inference takes (the engine's profile 1..max_batch).
    :param artifact_checks: what the precision's artifact is checked on when it is made
        (TensorRT >= 10): an :class:`~evit_ros.runtime.artifact.ArtifactChecks`, e.g. with
        CamVid frames so its sidecar and ``engines list`` carry the CPU mIoU; ``None``: the
        default checks (no mIoU).
    :param artifact: a prebuilt ONNX artifact (``evit-ros export --precision ...``) to compile
        instead of making one (TensorRT >= 10); its precision and input size must be the
        ones asked for. It is copied beside the engine in the cache.
    :raises BackendUnavailable: when TensorRT, CUDA or a GPU is missing, or the build fails.
    """

    name = 'tensorrt'
    #: logits come back to host memory, so the Segmenter labels them with the fast
    #: CPU path (:func:`evit_ros.runtime.bicubic.bicubic_argmax`).
    postprocess = 'fast'

    def __init__(self, model: nn.Module, input_size: Tuple[int, int], device: str = 'cuda',
                 precision: str = 'fp32', engine_dir: Optional[str] = None,
                 workspace_mb: int = DEFAULT_WORKSPACE_MB, calib: Optional[str] = None,
                 calib_topic: Optional[str] = None, calib_images: Optional[int] = None,
                 rebuild: bool = False, entry=None, weights=None,
                 engine_cache: Optional[EngineCache] = None, engine: Optional[str] = None,
                 max_batch: int = 1, artifact_checks=None, artifact: Optional[str] = None):
        options = dict(engine_dir=engine_dir, workspace_mb=workspace_mb, calib=calib,
                       calib_topic=calib_topic, calib_images=calib_images, rebuild=rebuild,
                       entry=entry, weights=weights, engine_cache=engine_cache, engine=engine,
                       max_batch=max_batch, artifact_checks=artifact_checks,
                       artifact=artifact)
        self._check_settings(input_size, device, precision, options)
        try:
            trt = import_tensorrt()
            from evit_ros.runtime.backends.cuda_memory import open_cuda_memory
            index = int(device.split(':', 1)[1]) if ':' in device else 0
            memory = open_cuda_memory(index)
        except BackendUnavailable as exc:
            if engine:  # name the engine that cannot run, and why, in one line
                raise BackendUnavailable(f'tensorrt: cannot run engine {engine}: '
                                         f'{str(exc)[len("tensorrt: "):]}') from None
            raise
        self._start(trt, memory, model, options)

    @classmethod
    def with_toolchain(cls, trt, memory, model: nn.Module, input_size: Tuple[int, int],
                       device: str = 'cuda', precision: str = 'fp32',
                       **options) -> 'TensorRTBackend':
        """Build (or load) the engine and bind it with the given ``trt`` module and memory.

        The whole path of the constructor (version check, artifact or export, network,
        builder config, profile, build, cache, deserialisation, I/O binding) runs with
        ``trt`` and ``memory`` (a :class:`~.cuda_memory.CudaMemory`) instead of the
        imported TensorRT and CUDA binding; :meth:`infer` then runs through them too. Tests
        drive it with stand-ins that claim a TensorRT version.

        :param options: the constructor's options (``engine_dir``, ``max_batch``, ...).
        """
        backend = cls.__new__(cls)
        # The constructor's options and defaults, so both entry points take the same ones.
        full = {name: param.default for name, param in
                inspect.signature(cls.__init__).parameters.items()
                if name not in ('self', 'model', 'input_size', 'device', 'precision')}
        unknown = sorted(set(options) - set(full))
        if unknown:
            raise TypeError(f'unknown TensorRT backend option(s) {", ".join(unknown)}')
        full.update(options)
        backend._check_settings(input_size, device, precision, full)
        backend._start(trt, memory, model, full)
        return backend

    def _check_settings(self, input_size, device: str, precision: str, options: dict) -> None:
        """Refuse bad settings before anything is imported or built."""
        Backend.__init__(self, input_size, device, precision)
        if precision not in PRECISIONS:
            raise BackendUnavailable(f'tensorrt precision {precision!r} is not one of '
                                     f'{", ".join(PRECISIONS)}')
        if not str(device).startswith('cuda'):
            raise BackendUnavailable(f'tensorrt runs on CUDA GPUs only, not on {device!r}; '
                                     'use device cuda, or backend onnxruntime / torch')
        if options['engine']:
            path = Path(options['engine']).expanduser()
            if not path.is_file():
                raise BackendUnavailable(f'tensorrt: engine file {path} does not exist; '
                                         'build one with `evit-ros build-engine`')
            if options['artifact']:
                raise BackendUnavailable('tensorrt: give a prebuilt engine or an artifact to '
                                         'compile, not both')
        elif options['artifact']:
            self._given_artifact = given_artifact(options['artifact'], precision,
                                                  input_size)
        elif precision == 'int8' and not options['calib']:
            raise BackendUnavailable('tensorrt: int8 needs calibration data: pass a folder '
                                     'of images or a rosbag2 bag (--calib), or a prebuilt '
                                     'int8 engine (engine)')
        if int(options['workspace_mb']) < 16:
            raise BackendUnavailable('tensorrt: workspace_mb must be >= 16, got '
                                     f'{options["workspace_mb"]}')
        if int(options['max_batch']) < 1:
            raise BackendUnavailable(f'tensorrt: max_batch must be >= 1, got '
                                     f'{options["max_batch"]}')

    def _start(self, trt, memory, model: nn.Module, options: dict) -> None:
        """Get the engine (prebuilt file, cache or build), create the context, bind the I/O."""
        check_version(trt)
        self.trt, self.memory = trt, memory
        if self.device == 'cuda':  # the GPU that runs: CUDA's first
            self.device = 'cuda:0'
        self.max_batch = int(options['max_batch'])
        self.cache = options['engine_cache'] or EngineCache(options['engine_dir'])
        builder = TensorRTBuilder(trt, memory, model, self.input_size, self.precision,
                                  int(options['workspace_mb']), self.max_batch,
                                  entry=options['entry'],
                                  artifact_checks=options['artifact_checks'],
                                  artifact_given=bool(options['artifact']))
        self._builder = builder  # owns the runtime the engine came from
        env = builder.environment()
        if options['engine']:
            self._load_prebuilt(Path(options['engine']).expanduser(), builder, env)
        else:
            self._load_or_build(model, builder, env, options)
        with memory.active():
            self.context = self.engine.create_execution_context()
        # One execution context and one set of buffers: the node's workers take turns.
        self._infer_lock = threading.Lock()
        if self.context is None:
            raise BackendUnavailable('tensorrt: no execution context (GPU memory full?): '
                                     + '; '.join(builder.logger.errors[-2:]))
        self._bind_io()

    def _load_prebuilt(self, path: Path, builder: TensorRTBuilder, env: dict) -> None:
        try:
            self.engine, sidecar = load_engine_file(path, builder, env)
        except EngineCacheError as exc:
            raise BackendUnavailable(f'tensorrt: {exc}') from None
        self.engine_path, self.built, self.key = path, False, None
        built_for = (sidecar.get('key') or {}).get('precision')
        if built_for is None:
            LOG.warning('tensorrt: engine %s has no sidecar; its precision is unknown', path)
            self.precision = 'unknown'
        else:
            if built_for != self.precision:
                LOG.info('tensorrt: engine %s is %s (%s was asked for); running it as it is',
                         path.name, built_for, self.precision)
            self.precision = built_for

    def _load_or_build(self, model: nn.Module, builder: TensorRTBuilder, env: dict,
                       options: dict) -> None:
        if options['artifact']:
            self._compile_given_artifact(builder, env, options)
            return
        calibration = None
        if self.precision == 'int8':
            from evit_ros.runtime.calibration import (
                CalibrationData, CalibrationError, DEFAULT_MAX_IMAGES)
            try:
                calibration = CalibrationData(options['calib'], self.input_size,
                                              options['calib_images'] or DEFAULT_MAX_IMAGES,
                                              options['calib_topic'])
            except CalibrationError as exc:
                raise BackendUnavailable(f'tensorrt: {exc}') from None
        entry = options['entry']
        self.key = engine_key(
            entry.name if entry is not None else 'custom',
            weights_sha256(model, entry, options['weights']), self.input_size, self.precision,
            env, builder.typing, self.max_batch,
            calibration.sha256 if calibration is not None else None)
        builder.calibration = calibration
        builder.calibration_cache = self.cache.calibration_path(self.key)
        builder.artifact_path = self.cache.artifact_path(self.key)
        rebuild = bool(options['rebuild'])
        if builder.typing == 'strong' and unscored(builder.artifact_path,
                                                   options['artifact_checks']):
            LOG.info('tensorrt: the cached artifact %s has no CamVid mIoU; making it again on '
                     'the labelled frames given', builder.artifact_path.name)
            builder.remake_artifact = rebuild = True
        try:
            loaded = self.cache.load(self.key, builder, rebuild=rebuild)
        except EngineCacheError as exc:
            raise BackendUnavailable(f'tensorrt: {exc}') from None
        self.engine, self.engine_path, self.built = loaded.engine, loaded.path, loaded.built

    def _compile_given_artifact(self, builder: TensorRTBuilder, env: dict,
                                options: dict) -> None:
        """Copy the given artifact beside its engine in the cache and compile it there.

        The key comes from the artifact's sidecar (its checkpoint and calibration data), so
        it is the key of the same build made from the model; a cached engine compiled from
        other artifact bytes is rebuilt.
        """
        if builder.typing != 'strong':
            raise BackendUnavailable(
                f'tensorrt {self.trt.__version__}: compiling an artifact needs TensorRT >= '
                f'{STRONG_TYPING_MAJOR} (strongly typed); on 8.x build from the model instead')
        source, info = self._given_artifact
        entry = options['entry']
        calibration = info.get('calibration') or {}
        self.key = engine_key(
            info.get('model') or (entry.name if entry is not None else 'custom'),
            info.get('checkpoint_sha256') or f'artifact:{info["sha256"]}', self.input_size,
            self.precision, env, builder.typing, self.max_batch, calibration.get('sha256'))
        target = self.cache.artifact_path(self.key)
        rebuild = bool(options['rebuild'])
        if source.resolve() != target.resolve():
            from evit_ros.runtime.artifact import sidecar_path
            same = (target.is_file() and sidecar_path(target).is_file()
                    and _sidecar_sha256(sidecar_path(target)) == info['sha256'])
            if not same:
                try:
                    self.cache.directory.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(source, target)
                    shutil.copyfile(sidecar_path(source), sidecar_path(target))
                except OSError as exc:
                    raise BackendUnavailable(f'tensorrt: cannot copy the artifact {source} '
                                             f'into {self.cache.directory}: {exc}') from None
                rebuild = True  # a cached engine of this key came from other bytes
        builder.artifact_path = target
        try:
            loaded = self.cache.load(self.key, builder, rebuild=rebuild)
        except EngineCacheError as exc:
            raise BackendUnavailable(f'tensorrt: {exc}') from None
        self.engine, self.engine_path, self.built = loaded.engine, loaded.path, loaded.built

    def _bind_io(self) -> None:
        """Read the engine's one input and one output and give each a device buffer."""
        trt, engine = self.trt, self.engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise BackendUnavailable(f'tensorrt: engine {self.engine_path} has inputs '
                                     f'{inputs} and outputs {outputs}; expected one of each')
        self.input_name, self.output_name = inputs[0], outputs[0]
        shape = tuple(int(d) for d in engine.get_tensor_shape(self.input_name))
        expected = (3,) + tuple(self.input_size)
        if len(shape) != 4 or shape[1:] != expected:
            raise BackendUnavailable(f'tensorrt: engine {self.engine_path} takes {shape}, '
                                     f'not Nx{"x".join(map(str, expected))}; rebuild it for '
                                     'this input size')
        self.dynamic = shape[0] == -1
        if self.dynamic:
            top = tuple(engine.get_tensor_profile_shape(self.input_name, 0)[2])
            self.max_batch = int(top[0])
            self.context.set_input_shape(self.input_name, (self.max_batch,) + expected)
        else:
            self.max_batch = shape[0]
        self.batch = self.max_batch
        self.buffers, self.host = {}, {}
        for name in (self.input_name, self.output_name):
            dims = tuple(int(d) for d in self.context.get_tensor_shape(name))
            dtype = numpy_dtype(trt, engine.get_tensor_dtype(name))
            self.host[name] = self.memory.host_empty(dims, dtype)
            self.buffers[name] = self.memory.alloc(self.host[name].nbytes)
            self.context.set_tensor_address(name, self.buffers[name])
        LOG.info('tensorrt: engine %s (%s): %s %s -> %s %s, batch up to %d',
                 self.engine_path.name, self.precision, self.input_name, shape,
                 self.output_name, tuple(self.host[self.output_name].shape), self.max_batch)

    def infer(self, x: np.ndarray) -> torch.Tensor:
        """Return fp32 logits for a preprocessed ``Nx3xHxW`` input, 1 <= N <= max_batch.

        Thread-safe: calls from several threads run one at a time.
        """
        with self._infer_lock:
            return self._infer(x)

    def _infer(self, x: np.ndarray) -> torch.Tensor:
        count = int(x.shape[0]) if x.ndim == 4 else 0
        expected = (3,) + tuple(self.input_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected or not 1 <= count <= self.max_batch:
            raise ValueError(f'tensorrt engine takes Nx{"x".join(map(str, expected))} with '
                             f'1 <= N <= {self.max_batch}, got {tuple(x.shape)}')
        if not self.dynamic and count != self.max_batch:
            raise ValueError(f'tensorrt engine takes a batch of exactly {self.max_batch}, '
                             f'got {count}')
        if self.dynamic and count != self.batch:
            self.context.set_input_shape(self.input_name, (count,) + expected)
            self.batch = count
        host_in = self.host[self.input_name][:count]
        host_out = self.host[self.output_name][:count]
        with self.memory.active():
            np.copyto(host_in, x, casting='same_kind')
            self.memory.to_device(self.buffers[self.input_name], host_in)
            ok = self.context.execute_async_v3(self.memory.stream_handle)
            self.memory.to_host(host_out, self.buffers[self.output_name])
            self.memory.synchronize()
        if not ok:
            errors = self._builder.logger.errors
            raise RuntimeError('tensorrt: inference failed'
                               + (f': {errors[-1]}' if errors else ''))
        return torch.from_numpy(host_out.astype(np.float32, copy=True))

    def close(self) -> None:
        """Free the device buffers (also done when the backend is garbage-collected)."""
        for pointer in getattr(self, 'buffers', {}).values():
            self.memory.free(pointer)
        self.buffers = {}

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: CUDA may already be gone
            pass
