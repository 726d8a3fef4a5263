"""ONNX Runtime backend: the fast CPU path on x86 and ARM, CUDA with onnxruntime-gpu.

The model is exported once per (weights, input size, precision, versions) through the
checked exporter (:mod:`evit_ros.runtime.export`: BatchNorm folded, bicubic upsampling as
matrix products) and cached as ONNX under ``$EVIT_ROS_CACHE/onnx``, so a restart loads it
instead of exporting again. A user's own ONNX file (``onnx_file``) is used as it is: its
input and output names and shapes are read from the file and checked against the
requested network size.

Session settings chosen for a robot: ``threads`` intra-op threads (0: one per physical
core), one inter-op thread, full graph optimisation, and no spin-waiting, so the worker
threads sleep between frames instead of burning the cores other nodes need (on this
2-core machine, under load from other processes, spinning also made B0 slower).
ONNX Runtime's own optimised-model file is not cached: with the export cached, creating
the session (graph optimisation included) takes about 0.1 s even for B1 at 1024x2048,
and ONNX Runtime marks such files as specific to the CPU they were made on.
"""

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from evit_ros import __version__
from evit_ros.runtime.backends import Backend, BackendUnavailable

LOG = logging.getLogger('evit_ros.runtime')

PRECISIONS = ('fp32',)
# Measured on an x86 CPU with VNNI (B0, 512x1024): ONNX Runtime's static int8 (QDQ,
# per-channel, convolutions only, attention fp32) ran 2-4x slower than this fp32 graph and
# agreed with it on 20-75 % of pixels, so int8 is left to TensorRT.
INT8_REFUSAL = ('onnxruntime int8 is not offered: on CPU it measured slower than fp32 and '
                'far less accurate; use fp32 here, or tensorrt for int8')
OPTIMIZATION_LEVELS = ('disable', 'basic', 'extended', 'all')
# Part of every cache key: bump when the exported graph changes for the same inputs.
_RECIPE = 'evit_ros onnx v2 (dynamic batch)'


def cache_root() -> Path:
    """Return the folder of cached ONNX files (``$EVIT_ROS_CACHE/onnx``)."""
    root = os.environ.get('EVIT_ROS_CACHE') or os.path.join('~', '.cache', 'evit_ros')
    return Path(root).expanduser().resolve() / 'onnx'


def weights_digest(model: nn.Module) -> str:
    """Return the sha256 of a model's parameters and buffers (names, shapes and values)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().to('cpu').contiguous()
        digest.update(f'{name}:{tuple(tensor.shape)}:{tensor.dtype}'.encode())
        digest.update(tensor.numpy().tobytes() if tensor.dtype != torch.bfloat16
                      else tensor.float().numpy().tobytes())
    return digest.hexdigest()


def artifact_precision(path: Union[str, os.PathLike]) -> str:
    """Return the precision an ONNX file was made in, from its artifact sidecar.

    ``<path>.json`` (see :mod:`evit_ros.runtime.artifact`) names it; a plain ONNX file
    without one is taken as the fp32 export.
    """
    sidecar = Path(str(path) + '.json').expanduser()
    try:
        info = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return 'fp32'
    value = info.get('precision') if isinstance(info, dict) else None
    return str(value) if value else 'fp32'


class OnnxRuntimeBackend(Backend):
    """Run the model with ONNX Runtime.

    :param model: the loaded PyTorch model (exported unless ``onnx_file`` is given).
    :param input_size: network ``(height, width)``.
    :param device: ``cpu``, or ``cuda[:N]`` with onnxruntime-gpu installed.
    :param precision: ``fp32`` (see :data:`INT8_REFUSAL` for int8, use tensorrt or torch
        for fp16).
    :param threads: intra-op threads; 0 lets ONNX Runtime use one per physical core.
    :param onnx_file: run this ONNX file instead of exporting ``model``; its input must be
        ``Nx3xHxW`` float32 (N symbolic or 1) at ``input_size`` (or symbolic), its output
        ``NxCxhxw`` logits. A prebuilt artifact runs in its own precision
        (:func:`artifact_precision`), which is what :attr:`precision` then says.
    :param optimization: graph optimisation level: disable, basic, extended or all.
    :param spin: let idle worker threads spin (lower latency on an otherwise idle
        machine, a busy core between frames on a shared one).
    :param cache: cache exported graphs under :func:`cache_root`.
    :param entry: the model's registry entry (names cached files).
    :param weights: where the weights came from (unused; accepted from the Segmenter).
    :raises BackendUnavailable: onnxruntime or the CUDA provider is missing.
    :raises ValueError: for a bad precision, option, or an ONNX file of the wrong shape.
    """

    name = 'onnxruntime'
    #: the Segmenter's ``postprocess='auto'`` labels these CPU logits with
    #: :func:`evit_ros.runtime.bicubic.bicubic_argmax`.
    postprocess = 'fast'

    def __init__(self, model: nn.Module, input_size: Tuple[int, int], device: str = 'cpu',
                 precision: str = 'fp32', threads: int = 0,
                 onnx_file: Optional[Union[str, os.PathLike]] = None,
                 optimization: str = 'all', spin: bool = False, cache: bool = True,
                 entry=None, weights=None):
        super().__init__(input_size, device, precision)
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailable(f'onnxruntime: not installed ({exc}); '
                                     'pip install onnxruntime') from None
        self.ort = ort
        if onnx_file is not None:
            # A prebuilt artifact runs as it is: its precision is the one it was made in.
            precision = self.precision = artifact_precision(onnx_file)
        elif precision == 'int8':
            raise ValueError(INT8_REFUSAL)
        if onnx_file is None and precision not in PRECISIONS:
            raise ValueError(f'onnxruntime precision {precision!r} is not one of '
                             f'{", ".join(PRECISIONS)}; use tensorrt or torch for fp16')
        if optimization not in OPTIMIZATION_LEVELS:
            raise ValueError(f'onnxruntime optimization {optimization!r} is not one of '
                             f'{", ".join(OPTIMIZATION_LEVELS)}')
        if int(threads) < 0:
            raise ValueError(f'threads must be >= 0 (0: one per core), got {threads}')
        self.providers = self._providers(str(device))
        self.threads = int(threads)
        self.label = entry.name if entry is not None else type(model).__name__.lower()
        self.path: Optional[Path] = None
        self.from_cache = False
        options = self._session_options(optimization, spin)
        if onnx_file is not None:
            self.path = Path(onnx_file).expanduser()
            if not self.path.is_file():
                raise ValueError(f'onnx_file {self.path} does not exist')
            source = str(self.path)
        else:
            source = self._model_bytes(model, precision, cache)
        try:
            self.session = self._session(source, options)
        except ValueError:
            if onnx_file is not None or not self.from_cache:
                raise
            # A cached file this onnxruntime cannot load (damaged disk, foreign file):
            # export again over it rather than fail the robot.
            LOG.warning('onnxruntime: cannot load cached %s; exporting again', self.path)
            source = self._model_bytes(model, precision, cache, reuse=False)
            self.session = self._session(source, options)
        if 'CUDAExecutionProvider' not in self.session.get_providers():
            self.device = 'cpu'  # what runs, should ONNX Runtime have left CUDA out
        elif self.device == 'cuda':
            self.device = 'cuda:0'
        self.input_name, self.output_name, self.output_shape = self._check_io(
            getattr(getattr(model, 'cfg', None), 'num_classes', None))
        #: whether the graph's batch axis is symbolic (one run for several images).
        self.batched = not isinstance(self.session.get_inputs()[0].shape[0], int)

    # -- building ------------------------------------------------------------------------

    def _providers(self, device: str) -> list:
        if device == 'cpu':
            return ['CPUExecutionProvider']
        if device == 'cuda' or device.startswith('cuda:'):
            if 'CUDAExecutionProvider' not in self.ort.get_available_providers():
                raise BackendUnavailable(
                    'onnxruntime: the CUDA execution provider is not available '
                    f'(providers: {", ".join(self.ort.get_available_providers())}); '
                    'install onnxruntime-gpu instead of onnxruntime')
            index = int(device.split(':')[1]) if ':' in device else 0
            return [('CUDAExecutionProvider', {'device_id': index}), 'CPUExecutionProvider']
        raise ValueError(f'onnxruntime device {device!r} is not cpu or cuda[:N]')

    def _session_options(self, optimization: str, spin: bool):
        ort = self.ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = {
            'disable': ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            'basic': ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            'extended': ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            'all': ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[optimization]
        options.add_session_config_entry('session.intra_op.allow_spinning',
                                         '1' if spin else '0')
        options.log_severity_level = 3
        return options

    def _session(self, source, options):
        try:
            return self.ort.InferenceSession(source, options, providers=self.providers)
        except Exception as exc:  # ORT raises its own exception types
            where = self.path if self.path is not None else 'the exported model'
            raise ValueError(f'onnxruntime cannot load {where}: '
                             f'{str(exc).strip().splitlines()[0]}') from None

    def _model_bytes(self, model: nn.Module, precision: str, cache: bool,
                     reuse: bool = True) -> bytes:
        from evit_ros.runtime.export import build_onnx, save_onnx
        height, width = self.input_size
        key = hashlib.sha256('\0'.join([
            _RECIPE, __version__, torch.__version__, self.ort.__version__,
            weights_digest(model), f'{height}x{width}', precision,
        ]).encode()).hexdigest()
        self.path = (cache_root() / f'{self.label}_{height}x{width}_{precision}_{key[:16]}.onnx'
                     if cache else None)
        self.from_cache = reuse and self.path is not None and self.path.is_file()
        if self.from_cache:
            LOG.info('onnxruntime: using cached %s', self.path)
            return self.path.read_bytes()
        LOG.info('onnxruntime: exporting %s at %dx%d (checked against PyTorch)',
                 self.label, height, width)
        proto, _ = build_onnx(model, self.input_size, dynamic_batch=True)
        if self.path is not None:
            try:
                # User-only, like the engine folder: a session trusts the file it loads.
                self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                save_onnx(proto, self.path)
            except OSError as exc:  # a read-only cache must not stop the robot
                LOG.warning('onnxruntime: cannot cache %s (%s)', self.path, exc)
        return proto.SerializeToString()

    def _check_io(self, num_classes: Optional[int]) -> Tuple[str, str, tuple]:
        """Read the graph's input and output, and check them against the network size."""
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        where = self.path.name if self.path is not None else 'the ONNX model'
        height, width = self.input_size
        if len(inputs) != 1:
            raise ValueError(f'{where} has {len(inputs)} inputs '
                             f'({", ".join(i.name for i in inputs)}); expected one image')
        image = inputs[0]
        shape = list(image.shape)
        if image.type != 'tensor(float)' or len(shape) != 4:
            raise ValueError(f'{where} input {image.name!r} is {image.type} {shape}; '
                             'expected float32 1x3xHxW')
        fixed = [d if isinstance(d, int) else None for d in shape]
        if fixed[0] not in (None, 1) or fixed[1] not in (None, 3) or \
                fixed[2] not in (None, height) or fixed[3] not in (None, width):
            got = 'x'.join(str(d) if isinstance(d, int) else 'N' for d in shape)
            hint = (f'pass input_size=({fixed[2]}, {fixed[3]})'
                    if fixed[2] and fixed[3] and fixed[:2] in ([1, 3], [None, 3])
                    else 'export it again')
            raise ValueError(f'{where} takes {got} input {image.name!r} but the network '
                             f'size is Nx3x{height}x{width}: {hint}')
        names = [o.name for o in outputs]
        output = outputs[names.index('logits')] if 'logits' in names else outputs[0]
        out_shape = tuple(output.shape)
        if len(out_shape) != 4:
            raise ValueError(f'{where} output {output.name!r} has shape {list(out_shape)}; '
                             'expected 1xCxhxw logits')
        if num_classes and isinstance(out_shape[1], int) and out_shape[1] != num_classes:
            raise ValueError(f'{where} outputs {out_shape[1]} classes but the model has '
                             f'{num_classes}; use the matching model or ONNX file')
        return image.name, output.name, out_shape

    # -- running -------------------------------------------------------------------------

    def infer(self, x: np.ndarray) -> torch.Tensor:
        """Return fp32 logits (CPU tensor) for an ``Nx3xHxW`` float32 input, N >= 1.

        A graph with a fixed batch of 1 (a user's ``onnx_file``) runs the images one by one.
        """
        x = np.ascontiguousarray(x, dtype=np.float32)
        expected = (3,) + tuple(self.input_size)
        if x.ndim != 4 or x.shape[0] < 1 or x.shape[1:] != expected:
            raise ValueError(f'onnxruntime: input shape {x.shape}, expected '
                             f'(N, {", ".join(map(str, expected))})')
        if x.shape[0] > 1 and not self.batched:
            return torch.cat([self.infer(x[i:i + 1]) for i in range(x.shape[0])])
        logits = self.session.run([self.output_name], {self.input_name: x})[0]
        return torch.from_numpy(logits)
