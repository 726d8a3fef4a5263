"""Precision artifacts of the official B0: fp16 and int8 graphs, their checks and sidecars.

The fp16 and int8 artifacts are made once per module at the CamVid network size
(736x960) and checked on 8 real CamVid val frames (the full 101-frame figures are in the
README, from ``bench/precision_artifacts.py``). int8 is calibrated on 7 other frames of the
same sequence, halfway between them. Everything runs on ONNX Runtime's CPU provider; int8
graphs with its QDQ fusions off, so Q/DQ are applied as written (see
:mod:`evit_ros.runtime.artifact`).
"""

import json

from conftest import require_shared
import cv2
import numpy as np
import onnx
from onnx import numpy_helper, TensorProto
import onnxruntime as ort
import pytest
import torch

from evit_ros.cli import main
from evit_ros.eval.labelled_images import LabelledImages, spread
from evit_ros.model import create_model, get_entry
from evit_ros.model.blocks import ATTENTION_EPS
from evit_ros.runtime import artifact
from evit_ros.runtime.artifact import (
    ArtifactChecks, ArtifactError, export_artifact, read_artifact_info, sidecar_path)
from evit_ros.runtime.fp16 import eps_values, float_types, fp32_nodes
from evit_ros.runtime.int8 import float_groups, qdq_summary
from evit_ros.runtime.preprocess import labels_from_logits, preprocess

SIZE = (736, 960)
CHECK_FRAMES = 8
ENTRY = get_entry('b0-cityscapes')


# PyTorch single-threaded here: same results, steady times on a loaded machine.
pytestmark = pytest.mark.usefixtures('one_torch_thread')


@pytest.fixture(scope='module')
def b0():
    """The official B0 Cityscapes model."""
    weights = require_shared('weights', 'efficientvit_seg_b0_cityscapes.pt')
    return create_model('b0-cityscapes', weights=str(weights))


@pytest.fixture(scope='module')
def camvid():
    """8 CamVid val frames spread over the sequence, with labels."""
    return LabelledImages.camvid(require_shared('data', 'camvid'), frames=CHECK_FRAMES)


@pytest.fixture(scope='module')
def fp16(b0, camvid, tmp_path_factory):
    """The fp16 artifact, checked on the 8 frames: (path, sidecar)."""
    path = tmp_path_factory.mktemp('fp16') / 'b0_fp16.onnx'
    info = export_artifact(b0, SIZE, 'fp16', path, entry=ENTRY,
                           checks=ArtifactChecks(labelled=camvid))
    return path, info


@pytest.fixture(scope='module')
def calibration_folder(tmp_path_factory):
    """7 CamVid val frames halfway between the check frames (links to them)."""
    files = sorted(require_shared('data', 'camvid', 'val').glob('*.png'))
    checked = spread(len(files), CHECK_FRAMES)
    folder = tmp_path_factory.mktemp('calibration')
    for index in checked[:-1]:
        (folder / files[index + 7].name).symlink_to(files[index + 7])
    return folder


@pytest.fixture(scope='module')
def int8(b0, camvid, calibration_folder, tmp_path_factory):
    """The int8 artifact, calibrated on the other frames, checked on the 8: (path, sidecar)."""
    path = tmp_path_factory.mktemp('int8') / 'b0_int8.onnx'
    info = export_artifact(b0, SIZE, 'int8', path, calibration=calibration_folder,
                           entry=ENTRY, checks=ArtifactChecks(labelled=camvid))
    return path, info


def session(path, precision='fp32'):
    """An ONNX Runtime CPU session; int8 with Q/DQ applied as written."""
    options = ort.SessionOptions()
    if precision == 'int8':
        options.add_session_config_entry('session.disable_quant_qdq', '1')
    return ort.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])


def camvid_rgb(index=0):
    """One real CamVid val frame as RGB."""
    files = sorted(require_shared('data', 'camvid', 'val').glob('*.png'))
    return cv2.cvtColor(cv2.imread(str(files[index])), cv2.COLOR_BGR2RGB)


def torch_miou(model, camvid):
    """CamVid mIoU of eager PyTorch fp32 on the check frames (independent of the artifact)."""
    def segment(rgb):
        with torch.inference_mode():
            logits = model(torch.from_numpy(preprocess(rgb, SIZE)))
        return labels_from_logits(logits, rgb.shape[:2])
    return camvid.score(segment)


@pytest.fixture(scope='module')
def fp32_scores(b0, camvid):
    """PyTorch fp32 on the check frames: mIoU and label maps."""
    return torch_miou(b0, camvid)


# -- fp16 ------------------------------------------------------------------------------

def test_fp16_graph_keeps_attention_and_its_eps_in_fp32(fp16):
    path, info = fp16
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    # fp32 in and out, any batch.
    for value in list(proto.graph.input) + list(proto.graph.output):
        assert value.type.tensor_type.elem_type == TensorProto.FLOAT
        assert value.type.tensor_type.shape.dim[0].dim_param == 'batch'
    blocked = fp32_nodes(proto)
    types = float_types(proto)
    attention = [n for n in proto.graph.node if n.name in set(blocked)]
    ops = [n.op_type for n in attention]
    # B0 has 4 LiteMLA blocks: 2 MatMuls, one eps Add and one Div each.
    assert ops.count('MatMul') == 8 and ops.count('Div') == 4 and ops.count('Add') == 4
    for node in attention:
        if node.op_type in ('MatMul', 'Div', 'Add'):
            for tensor in list(node.input) + list(node.output):
                assert types[tensor] == TensorProto.FLOAT, (node.name, tensor)
    eps = eps_values(proto, blocked)
    assert len(eps) == 4
    assert all(v.dtype == np.float32 and v.item() == np.float32(ATTENTION_EPS) for v in eps)
    # Everything else is fp16: every convolution's weights.
    weights = {i.name: i.data_type for i in proto.graph.initializer}
    convs = [n for n in proto.graph.node if n.op_type == 'Conv']
    assert len(convs) == 57
    assert all(weights[n.input[1]] == TensorProto.FLOAT16 for n in convs)
    assert info['recipe']['converter'].startswith('onnxruntime.transformers.float16')


def test_fp16_artifact_is_finite_on_black_and_real_frames_and_agrees(fp16, b0):
    path, _ = fp16
    black = preprocess(np.zeros((360, 480, 3), np.uint8), SIZE)
    real = preprocess(camvid_rgb(3), SIZE)
    logits = session(path).run(None, {'image': np.concatenate([black, real])})[0]
    assert logits.shape == (2, 19, 92, 120) and logits.dtype == np.float32
    assert np.isfinite(logits).all()
    with torch.inference_mode():
        expected = b0(torch.from_numpy(real)).numpy()
    # Measured 99.9 % on this frame (network output, 92x120).
    assert (logits[1].argmax(0) == expected[0].argmax(0)).mean() >= 0.995


def test_fp16_camvid_subset_miou_within_0_3_of_fp32(fp16, camvid, fp32_scores):
    path, info = fp16
    run = session(path)

    def segment(rgb):
        return labels_from_logits(run.run(None, {'image': preprocess(rgb, SIZE)})[0],
                                  rgb.shape[:2])
    scores = camvid.score(segment)
    # Measured on these 8 frames: fp16 69.90, ORT fp32 69.86, agreement 99.86 %.
    assert abs(scores['miou'] - fp32_scores['miou']) <= 0.3
    agreement = np.mean([(a == b).mean() for a, b in zip(scores['label_maps'],
                                                         fp32_scores['label_maps'])])
    assert agreement >= 0.995
    checks = info['checks']
    assert checks['passed'] and checks['finite'] and checks['frames'] == CHECK_FRAMES
    assert checks['camvid_miou'] == pytest.approx(scores['miou'], abs=1e-6)
    assert checks['fp32_camvid_miou'] == pytest.approx(fp32_scores['miou'], abs=0.05)
    assert checks['argmax_agreement'] >= 0.995


def test_sidecar_describes_the_file_and_detects_changes(fp16):
    path, info = fp16
    assert sidecar_path(path).name == 'b0_fp16.onnx.json'
    read = read_artifact_info(path)
    assert read == json.loads(sidecar_path(path).read_text())
    for key in ('model', 'precision', 'input_size', 'checkpoint_sha256', 'opset', 'recipe',
                'checks'):
        assert key in read
    assert (read['model'], read['precision'], read['input_size'], read['opset']) == (
        'b0-cityscapes', 'fp16', [736, 960], 17)
    for key in ('finite', 'argmax_agreement', 'camvid_miou', 'fp32_camvid_miou', 'frames'):
        assert key in read['checks']
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta['precision'] == 'fp16' and meta['model'] == 'b0-cityscapes'
    changed = path.with_name('changed.onnx')
    changed.write_bytes(path.read_bytes() + b'\0')
    sidecar_path(changed).write_text(sidecar_path(path).read_text())
    with pytest.raises(ArtifactError, match='describes other bytes'):
        read_artifact_info(changed)
    sidecar_path(changed).unlink()
    with pytest.raises(ArtifactError, match='has no sidecar'):
        read_artifact_info(changed)


# -- int8 ------------------------------------------------------------------------------

def test_int8_graph_is_symmetric_qdq_with_the_recipe_layers_kept_float(int8):
    path, info = int8
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    constants = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    producer = {out: node for node in proto.graph.node for out in node.output}
    quantize = [n for n in proto.graph.node if n.op_type == 'QuantizeLinear']
    assert quantize
    for node in quantize:          # activations: one int8 scale per tensor, zero point 0
        scale, zero = constants[node.input[1]], constants[node.input[2]]
        assert scale.size == 1 and zero.dtype == np.int8 and zero.item() == 0
    groups = float_groups(proto)
    kept = set(groups['attention']) | set(groups['mbconv_depthwise_pointwise']) | set(
        groups['half_resolution'])
    int8_layers = 0
    for node in proto.graph.node:
        if node.op_type not in ('Conv', 'MatMul'):
            continue
        quantized = [producer.get(t) is not None and producer[t].op_type == 'DequantizeLinear'
                     for t in node.input[:2]]
        if node.name in kept:
            assert not any(quantized), node.name
            continue
        assert all(quantized), node.name
        int8_layers += 1
        if node.op_type == 'Conv':     # weights: int8, one scale per output channel, zero 0
            weight = producer[node.input[1]]
            values = constants[weight.input[0]]
            scale, zero = constants[weight.input[1]], constants[weight.input[2]]
            assert values.dtype == np.int8 and scale.shape == (values.shape[0],)
            assert zero.dtype == np.int8 and not zero.any()
    # 31 of the 57 convolutions and the head's 4 upsampling MatMuls are int8.
    assert int8_layers == 35 == info['recipe']['int8_layers']
    summary = qdq_summary(proto)
    assert summary['asymmetric'] == [] and summary['quantized_layers'] == 35
    assert info['recipe']['kept_float'] == ['attention', 'mbconv_depthwise_pointwise',
                                            'half_resolution']
    assert info['calibration']['kind'] == 'folder' and info['calibration']['frames'] == 7


def test_int8_camvid_subset_miou_within_1_of_fp32(int8, camvid, fp32_scores):
    path, info = int8
    run = session(path, 'int8')

    def segment(rgb):
        return labels_from_logits(run.run(None, {'image': preprocess(rgb, SIZE)})[0],
                                  rgb.shape[:2])
    scores = camvid.score(segment)
    black = preprocess(np.zeros((360, 480, 3), np.uint8), SIZE)
    assert np.isfinite(run.run(None, {'image': black})[0]).all()
    # Measured on these 8 frames, calibrated on the 7 others: int8 69.81 vs ORT fp32 69.86,
    # agreement 99.45 %.
    assert fp32_scores['miou'] - scores['miou'] <= 1.0
    agreement = np.mean([(a == b).mean() for a, b in zip(scores['label_maps'],
                                                         fp32_scores['label_maps'])])
    assert agreement >= 0.97
    assert info['checks']['passed'] and info['checks']['camvid_miou'] == pytest.approx(
        scores['miou'], abs=1e-6)


# -- refusals and the CLI --------------------------------------------------------------

def test_an_artifact_missing_its_bound_is_refused_unless_forced(b0, tmp_path, monkeypatch):
    monkeypatch.setitem(artifact.MIN_AGREEMENT, 'fp16', 1.01)   # unreachable
    path = tmp_path / 'b0.onnx'
    real = ArtifactChecks(image=camvid_rgb())
    with pytest.raises(ArtifactError, match=r'fp16 artifact refused: argmax agreement .* '
                                            r'< 101%; nothing written'):
        export_artifact(b0, (128, 256), 'fp16', path, entry=ENTRY, checks=real)
    assert list(tmp_path.iterdir()) == []
    real.force = True
    info = export_artifact(b0, (128, 256), 'fp16', path, entry=ENTRY, checks=real)
    assert path.is_file() and not info['checks']['passed']
    assert 'written with force' in info['checks']['notes'][-1]
    assert read_artifact_info(path)['checks']['failures']


def test_without_real_frames_agreement_is_recorded_not_enforced(b0, tmp_path):
    """What a TensorRT build gets with ``checks=True`` and no data: finite, no verdict."""
    info = export_artifact(b0, (128, 256), 'fp16', tmp_path / 'b0.onnx', entry=ENTRY)
    checks = info['checks']
    assert checks['passed'] and checks['finite'] and not checks['agreement_enforced']
    assert set(checks['finite_inputs']) == {'black', 'synthetic'}
    assert checks['camvid_miou'] is None and checks['frames'] == 0
    assert any('mIoU not checked' in note for note in checks['notes'])


def test_cli_exports_an_fp16_artifact_end_to_end(official_weights, tmp_path, capsys):
    out = tmp_path / 'b0_fp16.onnx'
    code = main(['export', '--model', 'b0-cityscapes', '--precision', 'fp16', '--height',
                 '352', '--width', '480', '--check-data', str(require_shared('data',
                                                                             'camvid')),
                 '--check-frames', '2', '-o', str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    info = read_artifact_info(out)
    assert info['precision'] == 'fp16' and info['checks']['frames'] == 2
    assert info['checkpoint_sha256'] == ENTRY.checkpoint_sha256
    assert abs(info['checks']['camvid_miou'] - info['checks']['fp32_camvid_miou']) <= 0.3
    lines = captured.out.splitlines()
    assert lines[0].startswith(f'{out}: fp16, ') and 'input "image" Nx3x352x480' in lines[0]
    assert 'CamVid mIoU' in captured.out and f'sidecar: {out}.json' in captured.out


@pytest.mark.parametrize('argv, message', [
    (['--precision', 'bf8'], "unknown precision 'bf8'; choose one of fp32, fp16, int8"),
    (['--precision', 'int8'], 'int8 needs calibration frames: pass --calib'),
    (['--precision', 'fp16', '--calib', '.'], '--calib is for int8 only'),
    (['--precision', 'int8', '--calib', 'EMPTY'], 'no readable images'),
    (['--check-data', 'EMPTY'], 'is not CamVid val data'),
    (['--check-frames', '0', '--check-data', 'EMPTY'], '--check-frames must be >= 1'),
])
def test_export_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, argv, message):
    empty = tmp_path / 'empty'
    empty.mkdir()
    out = tmp_path / 'x.onnx'
    argv = [str(empty) if item == 'EMPTY' else item for item in argv]
    code = main(['export', '--model', 'b0-cityscapes', '--weights', 'none', '--height', '64',
                 '--width', '64', '-o', str(out)] + argv)
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith('evit-ros export: error: ') and message in err
    assert err.count('\n') == 1
    assert not out.exists() and not sidecar_path(out).exists()


def test_unchecked_and_unwritable_artifacts(tmp_path):
    model = create_model('b0-cityscapes').eval()      # random weights: structure only
    info = export_artifact(model, (64, 128), 'fp16', tmp_path / 'm.onnx', checks=False)
    checks = read_artifact_info(tmp_path / 'm.onnx')['checks']
    assert checks['skipped'] and checks['passed'] is None and checks['finite'] is None
    assert info['model'] is None and info['checkpoint_sha256'] is None
    assert len(info['weights_sha256']) == 64
    blocker = tmp_path / 'file'
    blocker.write_text('not a folder')
    with pytest.raises(ArtifactError, match='cannot write'):
        export_artifact(model, (64, 128), 'fp32', blocker / 'm.onnx', checks=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['file', 'm.onnx', 'm.onnx.json']
