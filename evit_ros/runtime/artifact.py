"""Precision artifacts: ONNX graphs that carry their numerics, checked on the CPU first.

TensorRT 10 and later build strongly typed networks: the precision of every layer comes
from the ONNX graph itself, an fp16 graph for fp16 and explicit QuantizeLinear /
DequantizeLinear pairs for int8. So the numerics are decided here, where they can be
measured without a GPU, and written as one artifact per precision:

- ``fp32``: the checked export (:mod:`.export`), compared with PyTorch.
- ``fp16``: :func:`.fp16.convert_to_fp16`, the LiteMLA attention kept in fp32.
- ``int8``: :func:`.int8.quantize_int8`, explicit Q/DQ calibrated on real frames, with the
  layers that break accuracy kept in fp32 (:data:`.int8.RECIPE`).

Every artifact has a symbolic batch axis and fp32 ``image`` / ``logits``, so it replaces the
fp32 graph anywhere. Before it is written it is run with ONNX Runtime on the CPU next to the
fp32 graph: logits must be finite on a black frame (the attention's 0/0 case) and a real
one, and with labelled frames (``ArtifactChecks.labelled``, e.g. the CamVid val set) its mIoU
must be within :data:`MIOU_BOUNDS` of the fp32 graph's on the same frames. An artifact that
fails is refused, nothing written, unless ``force``. The numbers go into a JSON sidecar
``<artifact>.json`` (:func:`read_artifact_info`) that TensorRT builders and ``engines list``
read.
"""

import dataclasses
import datetime
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

import numpy as np
from torch import nn

from evit_ros import __version__
from evit_ros.download import sha256_of
from evit_ros.runtime.export import (
    BATCH_AXIS, build_onnx, DEFAULT_OPSET, ExportError, INPUT_NAME, OUTPUT_NAME,
    parity_inputs)

PRECISIONS = ('fp32', 'fp16', 'int8')
#: sidecar format; bump when keys change meaning.
FORMAT = 'evit_ros-artifact-1'
#: largest mIoU drop from the fp32 graph (points, same frames) an artifact may show.
MIOU_BOUNDS = {'fp32': 0.0, 'fp16': 0.3, 'int8': 1.0}
#: lowest pixel agreement of the label maps with the fp32 graph's; the floor that applies
#: when no labelled frames are given. fp16 measured >= 99.7 % on every CamVid val frame.
MIN_AGREEMENT = {'fp32': 0.999, 'fp16': 0.99, 'int8': 0.9}
#: frames an int8 artifact is calibrated on when none is said.
DEFAULT_CALIBRATION_FRAMES = 32
#: how int8 graphs are evaluated on the CPU (what the agreement and mIoU mean).
INT8_EVALUATION = ('onnxruntime CPU with its QDQ fusions off (session.disable_quant_qdq): '
                   'every QuantizeLinear/DequantizeLinear applied as written, the arithmetic '
                   'between them in fp32, as TensorRT computes int8 layers up to accumulation '
                   'order')
FP16_EVALUATION = ('onnxruntime CPU: fp16 tensors, weights and casts as written; ops without '
                   'an fp16 CPU kernel run in fp32 between casts ONNX Runtime inserts')


class ArtifactError(ExportError):
    """An artifact that could not be made or failed its checks; nothing was written."""


@dataclasses.dataclass
class ArtifactChecks:
    """What an artifact is checked on before it is written.

    :param labelled: labelled frames scored against fp32: an object with ``name``, ``len()``
        and ``score(segment) -> dict`` (``miou`` and ``per_class`` in percent,
        ``label_maps``), such as :class:`evit_ros.eval.labelled_images.LabelledImages`;
        ``segment`` maps an RGB image to its label map. ``None``: no mIoU check (noted).
    :param image: a real RGB frame for the finiteness check (default: the first labelled
        or calibration frame).
    :param force: write the artifact even when it misses its bounds (the sidecar says so);
        non-finite logits are refused regardless.
    """

    labelled: Optional[Any] = None
    image: Optional[np.ndarray] = None
    force: bool = False


def sidecar_path(path: Union[str, os.PathLike]) -> Path:
    """Return where the sidecar of artifact ``path`` lives: ``<path>.json``."""
    path = Path(path)
    return path.with_name(path.name + '.json')


def export_artifact(model: nn.Module, input_size, precision: str,
                    path: Union[str, os.PathLike], calibration=None, entry=None,
                    checks: Union[bool, ArtifactChecks] = True, *,
                    opset: int = DEFAULT_OPSET, fold: bool = True, upsample: str = 'matmul',
                    checkpoint_sha256: Optional[str] = None,
                    calibration_frames: int = DEFAULT_CALIBRATION_FRAMES,
                    metadata: Optional[Dict[str, str]] = None,
                    progress: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    """Write the ``precision`` ONNX artifact of ``model`` and its sidecar; return the sidecar.

    :param model: an ``EfficientViTSeg`` (any dtype or device; exported on the CPU in fp32).
    :param input_size: network ``(height, width)``, multiples of 32.
    :param precision: ``fp32``, ``fp16`` or ``int8``.
    :param path: the ONNX file to write (atomically); the sidecar goes to ``<path>.json``.
    :param calibration: int8 only: a :class:`~evit_ros.runtime.calibration.CalibrationData`
        at ``input_size``, or a folder of images / rosbag2 bag to build one from.
    :param entry: the model's registry entry (names the model in the sidecar).
    :param checks: ``True`` (finite and agreement on a black and a real or synthetic frame;
        no mIoU), an :class:`ArtifactChecks` (adds labelled frames, ``force``), or ``False``
        (no checks; the sidecar says so).
    :param opset: ONNX opset of the export.
    :param fold: fold BatchNorm into the convolutions.
    :param upsample: head upsampling, ``matmul`` or ``resize`` (see :mod:`.export`).
    :param checkpoint_sha256: sha256 of the checkpoint file the weights came from.
    :param calibration_frames: most frames read from a calibration path.
    :param metadata: extra ``key: value`` strings stored in the graph's metadata.
    :param progress: called with a short line before each slow step.
    :returns: the sidecar (also written to ``<path>.json``).
    :raises ArtifactError: for a bad precision or calibration, a failed export, a failed
        check (with the numbers), or an unwritable path; nothing is written then.
    """
    say = progress or (lambda line: None)
    if precision not in PRECISIONS:
        raise ArtifactError(f'unknown precision {precision!r}; choose one of '
                            f'{", ".join(PRECISIONS)}')
    input_size = (int(input_size[0]), int(input_size[1]))
    if checks is True:
        checks = ArtifactChecks()
    calibration = _calibration(precision, calibration, input_size, calibration_frames)
    say(f'exporting fp32 at {input_size[0]}x{input_size[1]}, checked against PyTorch')
    sample = None
    if checks is not False and checks.image is not None:
        from evit_ros.runtime.preprocess import preprocess
        sample = preprocess(np.asarray(checks.image), input_size)
    try:
        base, report = build_onnx(model, input_size, opset=opset, fold=fold,
                                  upsample=upsample, check=checks is not False, sample=sample,
                                  dynamic_batch=True, metadata=metadata)
    except ExportError as exc:
        raise ArtifactError(str(exc)) from None
    if precision == 'fp16':
        from evit_ros.runtime.fp16 import convert_to_fp16, Fp16Error, RECIPE
        say('converting to fp16, attention kept in fp32')
        try:
            artifact, recipe = convert_to_fp16(base), dict(RECIPE)
        except Fp16Error as exc:
            raise ArtifactError(str(exc)) from None
    elif precision == 'int8':
        from evit_ros.runtime.int8 import Int8Error, quantize_int8
        say(f'calibrating int8 on {calibration.describe()}')
        try:
            artifact, recipe = quantize_int8(base, calibration)
        except Int8Error as exc:
            raise ArtifactError(str(exc)) from None
    else:
        artifact, recipe = base, {'export': 'torch.onnx.export (TorchScript, dynamo=False), '
                                            'checked against PyTorch'}
    if checks is False:
        results = {'skipped': True, 'passed': None, 'finite': None, 'argmax_agreement': None,
                   'camvid_miou': None, 'fp32_camvid_miou': None, 'frames': 0,
                   'notes': ['no checks were run (checks=False)']}
    else:
        say('checking on the CPU against the fp32 graph')
        results = check_artifact(artifact, base, precision, input_size, checks, calibration)
        if precision == 'fp32':
            results['pytorch_max_abs_diff'] = report.max_abs_diff
            results['pytorch_argmax_agreement'] = report.argmax_agreement
        _enforce(results, precision, checks.force)
    info = _sidecar(model, entry, precision, input_size, opset, recipe, results, calibration,
                    checkpoint_sha256, fold, upsample)
    _stamp(artifact, info, {p.key: p.value for p in base.metadata_props})
    _write(artifact, info, Path(path))
    return info


def read_artifact_info(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """Return the sidecar of artifact ``path``, checked to belong to that very file.

    :raises ArtifactError: when the artifact or its sidecar is missing, unreadable, of
        another format, or describes other bytes (the artifact changed after export).
    """
    path = Path(path)
    side = sidecar_path(path)
    if not path.is_file():
        raise ArtifactError(f'artifact {path} does not exist; make it with evit-ros export '
                            '--precision ...')
    try:
        info = json.loads(side.read_text())
    except FileNotFoundError:
        raise ArtifactError(f'artifact {path} has no sidecar {side}; export it again with '
                            'evit-ros export --precision ...') from None
    except (OSError, ValueError) as exc:
        raise ArtifactError(f'cannot read sidecar {side}: {exc}') from None
    if not isinstance(info, dict) or info.get('format') != FORMAT:
        raise ArtifactError(f'sidecar {side} is not an evit_ros artifact sidecar ({FORMAT})')
    digest = sha256_of(path)
    if info.get('sha256') != digest:
        raise ArtifactError(f'sidecar {side} describes other bytes than {path} (sha256 '
                            f'{str(info.get("sha256"))[:12]} vs {digest[:12]}); export again')
    return info


# -- checks ------------------------------------------------------------------------------

def check_artifact(artifact, base, precision: str, input_size, checks: ArtifactChecks,
                   calibration=None) -> Dict[str, Any]:
    """Run ``artifact`` next to the fp32 graph ``base`` on the CPU; return the ``checks``.

    Keys: ``finite`` (all inputs), ``finite_inputs``, ``argmax_agreement`` (pixels of the
    label maps, over the labelled frames when given, else of the network output on the real
    frame), ``camvid_miou`` / ``fp32_camvid_miou`` and per class (``None`` without
    labelled frames), ``frames``, ``bound``, ``evaluation``, ``notes``.
    """
    notes: List[str] = []
    candidate = _session(artifact, precision)
    reference = _session(base, 'fp32') if precision != 'fp32' else candidate
    inputs = parity_inputs(input_size)
    frames = {'black': inputs['black']}
    real = _real_frame(checks, calibration, input_size, notes)
    if real is not None:
        frames['real'] = real
    else:
        frames['synthetic'] = inputs['synthetic']
    names = list(frames)
    batch = np.concatenate([frames[name] for name in names])    # exercises the batch axis
    got = candidate.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
    expected = reference.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
    finite = {name: bool(np.isfinite(got[i]).all()) for i, name in enumerate(names)}
    agreement = float(np.mean(got[-1].argmax(0) == expected[-1].argmax(0)))
    results: Dict[str, Any] = {
        'finite': all(finite.values()), 'finite_inputs': finite,
        'argmax_agreement': agreement, 'agreement_on': f'network output, {names[-1]} frame',
        # Synthetic blobs sit near class boundaries everywhere (fp16 agrees on ~96 % of
        # them, on >= 99.7 % of real frames): the floor applies to real frames only.
        'agreement_enforced': real is not None,
        'camvid_miou': None, 'fp32_camvid_miou': None, 'frames': 0,
        'bound': MIOU_BOUNDS[precision], 'min_agreement': MIN_AGREEMENT[precision],
        'evaluation': {'fp16': FP16_EVALUATION, 'int8': INT8_EVALUATION}.get(
            precision, 'onnxruntime CPU fp32'),
    }
    if checks.labelled is None:
        notes.append('no labelled frames given: mIoU not checked, agreement on one frame')
    elif results['finite']:
        scored = checks.labelled.score(_segmenter(candidate, input_size))
        truth = scored if precision == 'fp32' else checks.labelled.score(
            _segmenter(reference, input_size))
        same = sum(int(np.count_nonzero(a == b))
                   for a, b in zip(scored['label_maps'], truth['label_maps']))
        total = sum(int(a.size) for a in scored['label_maps'])
        name = getattr(checks.labelled, 'name', 'labelled')
        results.update({
            'argmax_agreement': same / total if total else float('nan'),
            'agreement_on': f'label maps of the {len(scored["label_maps"])} {name} frames',
            'camvid_miou': scored['miou'], 'fp32_camvid_miou': truth['miou'],
            'camvid_per_class': scored['per_class'],
            'fp32_camvid_per_class': truth['per_class'],
            'frames': len(scored['label_maps']), 'check_data': str(
                getattr(checks.labelled, 'source', name)),
        })
    results['notes'] = notes
    return results


def _enforce(results: Dict[str, Any], precision: str, force: bool) -> None:
    """Set ``passed``; raise with the numbers when the artifact misses its bounds."""
    failures = []
    if not results['finite']:
        bad = ', '.join(k for k, v in results['finite_inputs'].items() if not v)
        raise ArtifactError(f'{precision} artifact refused: non-finite logits on the {bad} '
                            'frame; nothing written')
    if results['agreement_enforced'] and results['argmax_agreement'] < MIN_AGREEMENT[precision]:
        failures.append(f'argmax agreement {results["argmax_agreement"]:.2%} < '
                        f'{MIN_AGREEMENT[precision]:.0%}')
    if results['camvid_miou'] is not None:
        drop = results['fp32_camvid_miou'] - results['camvid_miou']
        results['miou_drop'] = drop
        if drop > MIOU_BOUNDS[precision] + 1e-9:
            failures.append(f'mIoU {results["camvid_miou"]:.2f} vs fp32 '
                            f'{results["fp32_camvid_miou"]:.2f} on {results["frames"]} frames '
                            f'(drop {drop:.2f} > {MIOU_BOUNDS[precision]})')
    results['passed'] = not failures
    if failures:
        results['failures'] = failures
        if not force:
            raise ArtifactError(f'{precision} artifact refused: {"; ".join(failures)}; '
                                'nothing written (--force writes it anyway)')
        results['notes'].append('written with force despite: ' + '; '.join(failures))


def _session(proto, precision: str):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if precision == 'int8':
        options.add_session_config_entry('session.disable_quant_qdq', '1')
    return ort.InferenceSession(proto.SerializeToString(), options,
                                providers=['CPUExecutionProvider'])


def _segmenter(session, input_size):
    """Return ``segment(rgb) -> label map`` at the image's size, as the Segmenter does."""
    from evit_ros.runtime.preprocess import labels_from_logits, preprocess

    def segment(rgb: np.ndarray) -> np.ndarray:
        logits = session.run([OUTPUT_NAME], {INPUT_NAME: preprocess(rgb, input_size)})[0]
        return labels_from_logits(logits, rgb.shape[:2])
    return segment


def _real_frame(checks: ArtifactChecks, calibration, input_size, notes: List[str]
                ) -> Optional[np.ndarray]:
    """Return the network input of a real frame for the finiteness check, or ``None``."""
    from evit_ros.runtime.preprocess import preprocess
    if checks.image is not None:
        return preprocess(np.asarray(checks.image), input_size)
    first = getattr(checks.labelled, 'first_image', None)
    if callable(first):
        return preprocess(first(), input_size)
    if calibration is not None:
        for network_input in calibration:
            return network_input
    notes.append('no real frame given: finite checked on a black and a synthetic frame, '
                 'agreement on the synthetic one recorded but not enforced')
    return None


# -- calibration, sidecar, writing -----------------------------------------------------

def _calibration(precision: str, calibration, input_size, frames: int):
    if precision != 'int8':
        if calibration is not None:
            raise ArtifactError(f'calibration data is for int8 only, not {precision}')
        return None
    from evit_ros.runtime.calibration import CalibrationData, CalibrationError
    if calibration is None:
        raise ArtifactError('int8 needs calibration frames: pass a folder of images or a '
                            'rosbag2 bag (evit-ros export --calib DIR|BAG)')
    if isinstance(calibration, CalibrationData):
        if tuple(calibration.input_size) != tuple(input_size):
            raise ArtifactError(f'calibration data is at {calibration.input_size}, the '
                                f'artifact at {input_size}')
        return calibration
    try:
        return CalibrationData(calibration, input_size, max_images=frames)
    except CalibrationError as exc:
        raise ArtifactError(str(exc)) from None


def _sidecar(model, entry, precision, input_size, opset, recipe, results, calibration,
             checkpoint_sha256, fold, upsample) -> Dict[str, Any]:
    import onnx
    import onnxruntime
    import torch

    from evit_ros.runtime.backends.onnxruntime_backend import weights_digest
    cfg = getattr(model, 'cfg', None)
    height, width = input_size
    info = {
        'format': FORMAT,
        'model': entry.name if entry is not None else None,
        'precision': precision,
        'input_size': [height, width],
        'input': {'name': INPUT_NAME, 'dtype': 'float32',
                  'shape': [BATCH_AXIS, 3, height, width]},
        'output': {'name': OUTPUT_NAME, 'dtype': 'float32',
                   'shape': [BATCH_AXIS, int(getattr(cfg, 'num_classes', 0) or 0),
                             height // 8, width // 8]},
        'checkpoint_sha256': checkpoint_sha256,
        'weights_sha256': weights_digest(model),
        'opset': int(opset),
        'batchnorm_folded': bool(fold),
        'upsample': upsample,
        'recipe': recipe,
        'calibration': None if calibration is None else {
            'source': str(calibration.path), 'kind': calibration.kind,
            'frames': len(calibration), 'sha256': calibration.sha256},
        'checks': results,
        'versions': {'evit_ros': __version__, 'torch': torch.__version__,
                     'onnx': onnx.__version__, 'onnxruntime': onnxruntime.__version__},
        'created': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
    }
    return _jsonable(info)


def _stamp(artifact, info: Dict[str, Any], export_props: Dict[str, str]) -> None:
    """Put the export's metadata, the precision and the recipe into the graph's metadata."""
    props = dict(export_props)
    props.update({'precision': info['precision'], 'artifact_format': FORMAT,
                  'recipe': json.dumps(info['recipe'], sort_keys=True)})
    if info['model']:
        props['model'] = info['model']
    existing = {p.key: p for p in artifact.metadata_props}
    for key, value in props.items():
        entry = existing.get(key) or artifact.metadata_props.add()
        entry.key, entry.value = key, str(value)


def _write(artifact, info: Dict[str, Any], path: Path) -> None:
    """Write the artifact and its sidecar: both complete before either replaces a file.

    A crash between the two renames leaves a new artifact beside an old sidecar, which
    :func:`read_artifact_info` detects by the sha256.
    """
    side = sidecar_path(path)
    data = artifact.SerializeToString()
    info['size_bytes'] = len(data)
    info['sha256'] = hashlib.sha256(data).hexdigest()
    text = json.dumps(info, indent=2, sort_keys=True) + '\n'
    staged = []
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for target, payload in ((path, data), (side, text.encode())):
            fd, tmp = tempfile.mkstemp(prefix=target.name + '.', suffix='.part',
                                       dir=target.parent)
            staged.append(tmp)
            with os.fdopen(fd, 'wb') as handle:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(staged[0], path)
        os.replace(staged[1], side)
    except OSError as exc:
        raise ArtifactError(f'cannot write {path}: {exc.strerror or exc}') from None
    finally:
        for tmp in staged:
            if os.path.exists(tmp):
                os.unlink(tmp)


def _jsonable(value):
    """Turn numpy scalars and tuples into plain JSON values; NaN becomes ``None``."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return None if not np.isfinite(value) else value
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value
