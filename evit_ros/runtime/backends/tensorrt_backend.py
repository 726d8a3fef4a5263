"""TensorRT backend: an engine built from the exported ONNX graph, cached and validated.

The engine is built with TensorRT's Python API in fp32, fp16 or int8. In fp16 and int8 the
LiteMLA attention (found by walking the network, :mod:`.attention_layers`) is pinned to fp32
with layer precision constraints, because in fp16 it overflows and gives NaN masks. Builds
use a bounded workspace, log progress at least every 5 s, turn out-of-memory failures into an
actionable message, and land in the validated :class:`~evit_ros.runtime.engine_cache.EngineCache`.
Input and output names, shapes and types are read from the engine.

TensorRT and a CUDA binding (cuda-python or pycuda) are imported only when this backend is
built; without them it raises :class:`~evit_ros.runtime.backends.BackendUnavailable`.
"""

import logging
import os
from pathlib import Path
import re
import tempfile
import threading
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from evit_ros.runtime.backends import Backend, BackendUnavailable
from evit_ros.runtime.backends.attention_layers import attention_regions, trt_network_nodes
from evit_ros.runtime.engine_cache import (
    EngineBuilder, EngineCache, EngineCacheError, EngineKey, weights_sha256, write_atomic)

LOG = logging.getLogger('evit_ros.runtime')

PRECISIONS = ('fp32', 'fp16', 'int8')
DEFAULT_WORKSPACE_MB = 1024
#: oldest TensorRT with the name-based I/O API (``num_io_tensors``, ``execute_async_v3``).
MIN_VERSION = (8, 5)
#: bump when the build recipe changes (export, pinning, flags): old engines then rebuild.
BUILD_RECIPE = '1'
TRT_MISSING = ("TensorRT not installed: install it from NVIDIA's JetPack / pip index, "
               'or use --backend onnxruntime')
_OOM = re.compile(r'out of memory|outofmemory|cudaErrorMemoryAllocation|bad_alloc|'
                  r'failed to allocate|insufficient memory|requested amount of gpu memory',
                  re.IGNORECASE)
_NO_TACTIC = re.compile(r'could not find any implementation|no implementation', re.IGNORECASE)


class EngineBuildError(BackendUnavailable):
    """TensorRT could not build an engine; the message says what to change."""


def import_tensorrt():
    """Return the ``tensorrt`` module.

    :raises BackendUnavailable: when it is missing or older than :data:`MIN_VERSION`.
    """
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailable(f'tensorrt: {TRT_MISSING} ({exc})') from None
    version = tuple(int(p) for p in re.findall(r'\d+', trt.__version__)[:2])
    if version < MIN_VERSION:
        raise BackendUnavailable(
            f'tensorrt: version {trt.__version__} is too old; this backend needs '
            f'{".".join(map(str, MIN_VERSION))} or newer (JetPack 5.1+)')
    return trt


def tensorrt_missing() -> str:
    """Return why TensorRT cannot be used here, or ``''`` when it imports."""
    try:
        import_tensorrt()
    except BackendUnavailable as exc:
        return str(exc)
    return ''


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
    """Return a ``trt.IProgressMonitor`` feeding ``status``, or ``None`` before TensorRT 10."""
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
                   if layer.get_output(i).dtype == trt.float32]
        if not outputs:
            continue  # shape arithmetic: no float precision to choose
        try:
            layer.precision = trt.float32
            for i in outputs:
                layer.set_output_type(i, trt.float32)
        except Exception as exc:  # a layer kind that takes no precision: leave it to TensorRT
            LOG.debug('tensorrt: cannot pin %s to fp32: %s', layer.name, exc)
            continue
        pinned += 1
    flag = getattr(trt.BuilderFlag, 'OBEY_PRECISION_CONSTRAINTS', None)
    config.set_flag(flag if flag is not None else trt.BuilderFlag.STRICT_TYPES)
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


class TensorRTBuilder(EngineBuilder):
    """Builds engines from a PyTorch model with TensorRT, for the engine cache."""

    def __init__(self, trt, memory, model: nn.Module, input_size: Tuple[int, int],
                 precision: str, workspace_mb: int, cache: EngineCache, calibration=None):
        self.trt, self.memory, self.model = trt, memory, model
        self.input_size, self.precision = tuple(input_size), precision
        self.workspace_mb, self.cache, self.calibration = workspace_mb, cache, calibration
        self.logger = make_logger(trt)
        self.status = BuildStatus()
        self.runtime = None

    def environment(self) -> dict:
        """Return the TensorRT version, GPU name and compute capability for the key."""
        gpu_name, capability = self.memory.device_info()
        return {'tensorrt_version': self.trt.__version__, 'gpu_name': gpu_name,
                'compute_capability': capability}

    def progress(self) -> str:
        """Return the build's current phases (TensorRT 10 reports them)."""
        return self.status.text()

    def build(self, key: EngineKey) -> bytes:
        """Export the model to ONNX, parse it and return the serialized engine."""
        trt = self.trt
        onnx_bytes = self._export()
        builder = trt.Builder(self.logger)
        major = int(trt.__version__.split('.')[0])
        # TensorRT 10 networks are always explicit-batch; 8.x needs the flag.
        flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse(onnx_bytes):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise EngineBuildError(
                'tensorrt: the ONNX parser rejected the exported model: '
                + ' | '.join(errors[:3]) + f' (TensorRT {trt.__version__})')
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace_mb << 20)
        if self.precision in ('fp16', 'int8'):
            if not getattr(builder, 'platform_has_fast_fp16', True):
                LOG.warning('tensorrt: this GPU has no fast fp16; %s may be slow',
                            self.precision)
            config.set_flag(trt.BuilderFlag.FP16)
            pin_attention_fp32(trt, network, config)
        keep_alive: List[Any] = []
        if self.precision == 'int8':
            config.set_flag(trt.BuilderFlag.INT8)
            nbytes = 4 * 3 * self.input_size[0] * self.input_size[1]
            calibrator = make_entropy_calibrator(trt, self.calibration,
                                                 self.cache.calibration_path(key),
                                                 self.memory, nbytes)
            config.int8_calibrator = calibrator
            keep_alive.append(calibrator)
            LOG.info('tensorrt: int8 calibration on %s', self.calibration.describe())
        monitor = make_progress_monitor(trt, self.status)
        if monitor is not None:
            config.progress_monitor = monitor
            keep_alive.append(monitor)
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

    def _export(self) -> bytes:
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
                report = export_onnx(self.model, self.input_size, path, check=check)
            except ExportError as exc:
                raise EngineBuildError(f'tensorrt: {exc}') from None
            if check:
                LOG.info('tensorrt: ONNX export matches PyTorch (max |dlogit| %.2g)',
                         report.max_abs_diff)
            return Path(path).read_bytes()


class TensorRTBackend(Backend):
    """Run the model as a TensorRT engine on a CUDA GPU.

    :param device: ``cuda`` or ``cuda:N``.
    :param precision: ``fp32``, ``fp16`` or ``int8`` (attention stays fp32 in the latter two).
    :param engine_dir: engine folder; default ``$EVIT_ROS_ENGINE_DIR`` or the package's.
    :param workspace_mb: TensorRT builder workspace limit in MiB.
    :param calib: int8 only: a folder of images or a rosbag2 bag to calibrate on.
    :param calib_topic: image topic when ``calib`` is a bag with several.
    :param calib_images: most calibration frames used.
    :param rebuild: build even when a valid engine is cached.
    :param entry: the registry entry of ``model`` (names the engine, gives its sha256).
    :param weights: what ``model``'s weights came from (``official`` or a checkpoint path).
    :param engine_cache: an :class:`EngineCache` to use instead of one on ``engine_dir``.
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
                 engine_cache: Optional[EngineCache] = None):
        super().__init__(input_size, device, precision)
        if precision not in PRECISIONS:
            raise BackendUnavailable(f'tensorrt precision {precision!r} is not one of '
                                     f'{", ".join(PRECISIONS)}')
        if not str(device).startswith('cuda'):
            raise BackendUnavailable(f'tensorrt runs on CUDA GPUs only, not on {device!r}; '
                                     'use device cuda, or backend onnxruntime / torch')
        if precision == 'int8' and not calib:
            raise BackendUnavailable('tensorrt: int8 needs calibration data: pass a folder '
                                     'of images or a rosbag2 bag (--calib)')
        if int(workspace_mb) < 16:
            raise BackendUnavailable(f'tensorrt: workspace_mb must be >= 16, got {workspace_mb}')
        self.trt = trt = import_tensorrt()
        from evit_ros.runtime.backends.cuda_memory import open_cuda_memory
        index = int(device.split(':', 1)[1]) if ':' in device else 0
        self.memory = open_cuda_memory(index)
        calibration = None
        if precision == 'int8':
            from evit_ros.runtime.calibration import (
                CalibrationData, CalibrationError, DEFAULT_MAX_IMAGES)
            try:
                calibration = CalibrationData(calib, input_size, calib_images
                                              or DEFAULT_MAX_IMAGES, calib_topic)
            except CalibrationError as exc:
                raise BackendUnavailable(f'tensorrt: {exc}') from None
        self.cache = engine_cache or EngineCache(engine_dir)
        builder = TensorRTBuilder(trt, self.memory, model, input_size, precision,
                                  int(workspace_mb), self.cache, calibration)
        env = builder.environment()
        self.key = EngineKey(
            model=entry.name if entry is not None else 'custom',
            weights_sha256=weights_sha256(model, entry, weights),
            input_shape=(1, 3, int(input_size[0]), int(input_size[1])),
            precision=precision,
            calibration_sha256=calibration.sha256 if calibration else None,
            tensorrt_version=env['tensorrt_version'], gpu_name=env['gpu_name'],
            compute_capability=env['compute_capability'], workspace_mb=int(workspace_mb),
            build_settings=(('attention', 'fp32' if precision != 'fp32' else 'as-is'),
                            ('recipe', BUILD_RECIPE)))
        try:
            loaded = self.cache.load(self.key, builder, rebuild=rebuild)
        except EngineCacheError as exc:
            raise BackendUnavailable(f'tensorrt: {exc}') from None
        self.engine, self.engine_path, self.built = loaded.engine, loaded.path, loaded.built
        self._builder = builder  # owns the runtime the engine came from
        with self.memory.active():
            self.context = self.engine.create_execution_context()
        if self.context is None:
            raise BackendUnavailable('tensorrt: no execution context (GPU memory full?): '
                                     + '; '.join(builder.logger.errors[-2:]))
        self._bind_io()

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
        expected = (1, 3) + tuple(self.input_size)
        shape = tuple(engine.get_tensor_shape(self.input_name))
        if shape != expected:
            raise BackendUnavailable(f'tensorrt: engine {self.engine_path} takes {shape}, '
                                     f'not {expected}; rebuild it for this input size')
        self.buffers = {}
        self.host = {}
        for name in (self.input_name, self.output_name):
            dims = tuple(self.context.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            self.host[name] = self.memory.host_empty(dims, dtype)
            self.buffers[name] = self.memory.alloc(self.host[name].nbytes)
            self.context.set_tensor_address(name, self.buffers[name])
        LOG.info('tensorrt: engine %s: %s %s -> %s %s', self.engine_path.name,
                 self.input_name, shape, self.output_name,
                 tuple(self.host[self.output_name].shape))

    def infer(self, x: np.ndarray) -> torch.Tensor:
        """Return fp32 logits for one preprocessed ``1x3xHxW`` input."""
        host_in = self.host[self.input_name]
        if x.shape != host_in.shape:
            raise ValueError(f'tensorrt engine takes {host_in.shape}, got {x.shape}')
        host_out = self.host[self.output_name]
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
