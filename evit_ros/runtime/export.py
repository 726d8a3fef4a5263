"""ONNX export: static image size, checked against PyTorch before anything is written.

The graph takes ``image`` (``1x3xHxW`` float32, normalised RGB as
:func:`evit_ros.runtime.preprocess.preprocess` makes it) and returns ``logits``
(``1xCxH/8xW/8`` float32); with ``dynamic_batch`` both take any batch ``N`` instead of 1.
It is exported with the TorchScript-based exporter
(``dynamo=False``): in torch 2.13 the dynamo exporter's optimiser deletes LiteMLA's
``+ 1e-15`` as "adding zero", which turns the attention's 0/0 into NaN. Every export is run
through ``onnx.checker`` and ONNX Runtime and compared with the eager PyTorch model on a
synthetic image and on a black frame (where the attention denominators vanish); a graph that
disagrees is refused, never written.
"""

import io
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from evit_ros import __version__
from evit_ros.model import check_input_size
from evit_ros.runtime.deploy import deployment_model
from evit_ros.runtime.preprocess import MEAN, STD

INPUT_NAME = 'image'
OUTPUT_NAME = 'logits'
DEFAULT_OPSET = 17
#: name of the symbolic batch axis of a ``dynamic_batch`` export.
BATCH_AXIS = 'batch'
#: Parity demanded of an export: max |logit difference| and argmax agreement.
MAX_ABS_DIFF = 1e-3
MIN_AGREEMENT = 0.999
#: A constant frame makes the attention sum thousands of identical tokens; there ONNX
#: Runtime's fp32 GEMMs stray up to 2e-3 from fp64 at 1024x2048 (PyTorch 4e-4), so the
#: black frame checks for finite logits and argmax agreement with a looser bound.
BLACK_MAX_ABS_DIFF = 1e-2


class ExportError(RuntimeError):
    """An export that could not be produced or failed its checks; nothing was written."""


@dataclass
class ExportReport:
    """What was exported and how well it matches PyTorch."""

    input_name: str
    output_name: str
    input_shape: Tuple[int, ...]
    output_shape: Tuple[int, ...]
    opset: int
    #: worst max |logit difference| from PyTorch over the synthetic (and sample) inputs.
    max_abs_diff: float
    #: worst argmax agreement with PyTorch over every checked input.
    argmax_agreement: float
    path: Optional[Path] = None
    size_bytes: int = 0


def build_onnx(model: nn.Module, input_size: Tuple[int, int], opset: int = DEFAULT_OPSET,
               fold: bool = True, upsample: str = 'matmul', check: bool = True,
               sample: Optional[np.ndarray] = None,
               metadata: Optional[Dict[str, str]] = None, dynamic_batch: bool = False):
    """Export ``model`` at ``input_size`` and return ``(onnx.ModelProto, ExportReport)``.

    :param model: an ``EfficientViTSeg`` (or any module mapping ``1x3xHxW`` to logits).
    :param input_size: network ``(height, width)``, multiples of 32.
    :param opset: ONNX opset.
    :param fold: fold BatchNorm into the convolutions (see :mod:`evit_ros.runtime.deploy`).
    :param upsample: ``matmul`` (fast, portable) or ``resize`` (the release's cubic Resize).
    :param check: compare with PyTorch through ONNX Runtime (disable only in tests of
        the check itself).
    :param sample: an extra ``1x3xHxW`` normalised input to compare on (e.g. a real frame).
    :param metadata: extra ``key: value`` strings stored in the model's metadata.
    :param dynamic_batch: give input and output a symbolic batch axis ``batch`` (any N >= 1)
        instead of a fixed 1.
    :raises ExportError: when the export fails, the checker rejects it, or it does not
        match PyTorch.
    """
    import onnx

    height, width = (int(input_size[0]), int(input_size[1]))
    check_input_size(height, width)
    reference = _cpu_fp32(model)
    deployed = deployment_model(reference, (height, width), fold=fold, upsample=upsample)
    dummy = torch.zeros(1, 3, height, width)
    buffer = io.BytesIO()
    axes = {INPUT_NAME: {0: BATCH_AXIS}, OUTPUT_NAME: {0: BATCH_AXIS}} if dynamic_batch else None
    try:
        with warnings.catch_warnings():
            # Shape checks in forward() are constants for a static export, as intended.
            warnings.simplefilter('ignore', torch.jit.TracerWarning)
            warnings.filterwarnings('ignore', category=UserWarning, module='torch.onnx')
            warnings.filterwarnings('ignore', category=DeprecationWarning)
            torch.onnx.export(deployed, (dummy,), buffer, input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], opset_version=opset,
                              do_constant_folding=True, dynamic_axes=axes, dynamo=False)
    except Exception as exc:  # the exporter raises many types; report them as one
        raise ExportError(f'torch.onnx.export failed at {height}x{width}: {exc}') from exc
    proto = onnx.load_from_string(buffer.getvalue())
    # The tracer leaves the output's dims symbolic; only the batch may be.
    with torch.inference_mode():
        out_shape = tuple(deployed(dummy).shape)
    dims = proto.graph.output[0].type.tensor_type.shape.dim
    del dims[:]
    for index, value in enumerate(out_shape):
        if index == 0 and dynamic_batch:
            dims.add().dim_param = BATCH_AXIS
        else:
            dims.add().dim_value = int(value)
    props = {
        'evit_ros_version': __version__,
        'input_size': f'{height}x{width}',
        'num_classes': str(_num_classes(reference)),
        'input_normalisation': 'rgb/255 - mean / std; mean ' + ','.join(map(str, MEAN))
                               + ' std ' + ','.join(map(str, STD)),
        'batchnorm_folded': str(bool(fold)).lower(),
        'upsample': upsample,
        'torch_version': torch.__version__,
    }
    props.update(metadata or {})
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = str(key), str(value)
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f'onnx.checker rejects the exported graph: {exc}') from exc
    report = ExportReport(INPUT_NAME, OUTPUT_NAME, (1, 3, height, width), out_shape, opset,
                          float('nan'), float('nan'))
    if check:
        _check_parity(proto, reference, (height, width), sample, report)
    return proto, report


def export_onnx(model: nn.Module, input_size: Tuple[int, int], path: Union[str, os.PathLike],
                **options) -> ExportReport:
    """Export ``model`` to the ONNX file ``path``, atomically, only if it matches PyTorch.

    Takes the options of :func:`build_onnx`. The file appears complete or not at all.

    :returns: the :class:`ExportReport`, with ``path`` and ``size_bytes`` set.
    :raises ExportError: when the export fails its checks (nothing is written), or the
        file cannot be written.
    """
    proto, report = build_onnx(model, input_size, **options)
    report.path = Path(path)
    try:
        report.size_bytes = save_onnx(proto, report.path)
    except OSError as exc:
        raise ExportError(f'cannot write {path}: {exc.strerror or exc}') from exc
    return report


def save_onnx(proto, path: Union[str, os.PathLike]) -> int:
    """Write an ONNX model atomically (temporary file, fsync, rename); return its size.

    :raises OSError: when the folder or file cannot be written.
    """
    path = Path(path)
    data = proto.SerializeToString()
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + '.', suffix='.part', dir=folder)
    try:
        with os.fdopen(fd, 'wb') as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return len(data)


def _cpu_fp32(model: nn.Module) -> nn.Module:
    param = next(model.parameters(), None)
    if param is not None and (param.device.type != 'cpu' or param.dtype != torch.float32):
        import copy
        model = copy.deepcopy(model).to('cpu', torch.float32)
    return model.eval()


def _num_classes(model: nn.Module) -> int:
    cfg = getattr(model, 'cfg', None)
    return int(getattr(cfg, 'num_classes', 0) or 0)


def parity_inputs(input_size: Tuple[int, int],
                  sample: Optional[np.ndarray] = None) -> Dict[str, np.ndarray]:
    """Return the named normalised inputs an export is checked on.

    ``synthetic``: a seeded random image of smooth colour blobs (white noise is no camera
    image: fp32 PyTorch itself strays 3e-3 from fp64 on it); ``black``: a black frame,
    where ReLU'd keys vanish so a graph without the attention's eps divides 0 by 0; and
    the caller's ``sample`` when given.
    """
    import cv2

    from evit_ros.runtime.preprocess import preprocess
    height, width = input_size
    generator = np.random.default_rng(0)
    coarse = generator.integers(0, 256, (max(2, height // 16), max(2, width // 16), 3),
                                dtype=np.uint8)
    image = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    inputs = {
        'synthetic': preprocess(image, (height, width)),
        'black': preprocess(np.zeros((height, width, 3), np.uint8), (height, width)),
    }
    if sample is not None:
        sample = np.asarray(sample, dtype=np.float32)
        if sample.shape != (1, 3, height, width):
            raise ExportError(f'parity sample has shape {sample.shape}, expected '
                              f'(1, 3, {height}, {width})')
        inputs['sample'] = sample
    return inputs


def compare_logits(logits: np.ndarray, reference: np.ndarray) -> Tuple[float, float]:
    """Return ``(max |difference|, argmax agreement)``; NaN or inf give ``(inf, agreement)``."""
    logits = np.asarray(logits, dtype=np.float32)
    reference = np.asarray(reference, dtype=np.float32)
    if logits.shape != reference.shape:
        raise ExportError(f'logits shape {logits.shape} differs from PyTorch '
                          f'{reference.shape}')
    agreement = float(np.mean(logits.argmax(1) == reference.argmax(1)))
    if not np.all(np.isfinite(logits)):
        return float('inf'), agreement
    return float(np.max(np.abs(logits - reference))), agreement


def _check_parity(proto, reference: nn.Module, input_size: Tuple[int, int],
                  sample: Optional[np.ndarray], report: ExportReport) -> None:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ExportError('checking the export needs onnxruntime: pip install onnxruntime'
                          ) from exc
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(proto.SerializeToString(), options,
                                   providers=['CPUExecutionProvider'])
    worst, agreement = 0.0, 1.0
    for name, x in parity_inputs(input_size, sample).items():
        with torch.inference_mode():
            expected = reference(torch.from_numpy(np.ascontiguousarray(x))).numpy()
        got = session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
        diff, agree = compare_logits(got, expected)
        report.output_shape = tuple(got.shape)
        limit = BLACK_MAX_ABS_DIFF if name == 'black' else MAX_ABS_DIFF
        if name != 'black':
            worst = max(worst, diff)
        agreement = min(agreement, agree)
        if not (diff <= limit and agree >= MIN_AGREEMENT):
            raise ExportError(
                f'the ONNX graph does not match PyTorch on the {name} input at '
                f'{input_size[0]}x{input_size[1]}: max |dlogit| {diff:.3g} (limit '
                f'{limit:g}), argmax agreement {agree:.4%} (limit '
                f'{MIN_AGREEMENT:.1%}); nothing written. Non-finite logits mean the '
                f"attention's eps was lost (the dynamo exporter does that); otherwise try "
                f'--opset {DEFAULT_OPSET} or upsample=resize and report the model')
    report.max_abs_diff, report.argmax_agreement = worst, agreement
