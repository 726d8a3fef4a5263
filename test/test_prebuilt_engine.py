"""A built engine is usable everywhere; what runs is what is reported; the GPU check.

* The real ``segmentation_node`` process, started with ``backend:=tensorrt`` and a prebuilt
  ``engine:=...`` on a machine without TensorRT, fails at start-up with ONE line naming the
  engine file and the missing library (skipped where TensorRT is installed).
* ``Segmenter(engine=...)`` runs a prebuilt ONNX artifact on onnxruntime as it is, and its
  ``device`` / ``precision`` are the ones running (the artifact's, not the requested).
* ``bench/gpu_check.py`` on a machine without a GPU exits 0 and writes a JSON that says what
  was skipped and why (skipped where a CUDA GPU exists).
"""

import importlib.util
import json
from pathlib import Path
import subprocess
import sys

import numpy as np
import pytest
import torch

import ros_harness
from conftest import require_shared
from evit_ros.model import create_model
from evit_ros.runtime import Segmenter
from evit_ros.runtime.export import build_onnx, save_onnx
from ros_harness import domain_range, NodeProcess, ros_env

REPO = Path(__file__).resolve().parents[1]
HAVE_TENSORRT = importlib.util.find_spec('tensorrt') is not None
SIZE = (64, 128)
domain_id = domain_range(200, 20)   # this file's range, 200-219


@pytest.fixture(autouse=True)
def own_domains(monkeypatch):
    monkeypatch.setattr(ros_harness, 'next_domain_id', domain_id)


@pytest.mark.skipif(HAVE_TENSORRT, reason='TensorRT is installed here')
def test_node_with_a_prebuilt_engine_and_no_tensorrt_fails_in_one_line(tmp_path):
    weights = require_shared('weights', 'efficientvit_seg_b0_cityscapes.pt').parent
    engine = tmp_path / 'b0_512x1024_int8.engine'
    engine.write_bytes(b'an engine built elsewhere')
    env = ros_env(domain_id(), EVIT_ROS_CACHE=str(tmp_path / 'cache'),
                  EVIT_ROS_WEIGHTS_DIR=str(weights))
    node = NodeProcess({'backend': 'tensorrt', 'device': 'cuda', 'engine': str(engine)}, env)
    code = node.proc.wait(120)
    lines = [line for line in node.log().splitlines() if line.strip()]
    assert code != 0
    assert len(lines) == 1, lines
    assert lines[0] == (
        'segmentation_node: error: cannot load b0-cityscapes on tensorrt/cuda: tensorrt: '
        f'cannot run engine {engine}: TensorRT is not installed here (it needs an NVIDIA GPU; '
        "on a Jetson it comes with JetPack) (No module named 'tensorrt')")
    assert not (tmp_path / 'cache').exists() or not any((tmp_path / 'cache').rglob('*.onnx'))


@pytest.fixture(scope='module')
def artifact(tmp_path_factory):
    """A prebuilt 'int8' artifact: the real fp32 export with a sidecar naming int8.

    The int8 graph itself is another branch's (evit_ros.runtime.artifact); here only the
    sidecar's precision matters: what runs is reported as the file's, not as asked.
    """
    torch.manual_seed(0)
    model = create_model('b0-cityscapes')
    folder = tmp_path_factory.mktemp('artifact')
    path = folder / 'b0_64x128_int8.onnx'
    proto, _ = build_onnx(model, SIZE, check=False)
    save_onnx(proto, path)
    Path(str(path) + '.json').write_text(json.dumps({'precision': 'int8'}))
    return model, path


def test_segmenter_runs_a_prebuilt_artifact_and_reports_it(artifact):
    model, path = artifact
    segmenter = Segmenter(model, backend='auto', input_size=SIZE, precision='fp32',
                          engine=str(path))
    assert (segmenter.backend_name, segmenter.device, segmenter.precision) == (
        'onnxruntime', 'cpu', 'int8')
    assert segmenter.backend.path == path and not segmenter.backend.from_cache
    image = np.random.default_rng(0).integers(0, 256, (48, 96, 3), np.uint8)
    reference = Segmenter(model, backend='torch', input_size=SIZE)
    assert (reference.device, reference.precision) == ('cpu', 'fp32')
    agreement = np.mean(segmenter.segment(image) == reference.segment(image))
    assert agreement > 0.999
    with pytest.raises(ValueError, match='backend torch cannot run a prebuilt file'):
        Segmenter(model, backend='torch', input_size=SIZE, engine=str(path))


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the no-GPU report')
def test_gpu_check_without_a_gpu_says_what_it_skipped(tmp_path):
    out = tmp_path / 'gpu.json'
    result = subprocess.run([sys.executable, str(REPO / 'bench' / 'gpu_check.py'), '--out',
                             str(out)], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (f'wrote {out} (skipped: torch_cuda, onnxruntime_cuda, '
                                     'tensorrt)')
    report = json.loads(out.read_text())
    assert report['gpu'] is None and report['sizes'] == ['512x1024', '1024x2048']
    assert report['torch_cuda'] == {
        'skipped': 'no CUDA GPU (torch.cuda.is_available() is False)'}
    assert report['onnxruntime_cuda']['skipped'].startswith('onnxruntime has no CUDA provider')
    if HAVE_TENSORRT:
        assert report['tensorrt'] == {
            'skipped': 'no CUDA GPU (torch.cuda.is_available() is False)'}
    else:
        assert report['tensorrt']['skipped'].startswith('tensorrt: TensorRT is not installed')
        assert report['tensorrt_version'] is None


def test_replay_runs_a_prebuilt_artifact(official_weights, tmp_path, capsys):
    from evit_ros.cli import main
    tiny = require_shared('data', 'rosbag2_sqlite_tiny')
    model = create_model('b0-cityscapes', weights='official')
    path = tmp_path / 'b0_64x64.onnx'
    save_onnx(build_onnx(model, (64, 64), check=False)[0], path)
    args = ['replay', str(tiny), '--image-topic', '/image', '--network-size', '64x64',
            '--out-storage', 'sqlite3']
    assert main(args + ['--backend', 'auto', '--engine', str(path), '--out',
                        str(tmp_path / 'a')]) == 0
    assert main(args + ['--backend', 'onnxruntime', '--out', str(tmp_path / 'b')]) == 0
    first, second = (json.loads((tmp_path / name / 'report.json').read_text())
                     for name in 'ab')
    assert (first['backend'], first['frames']) == ('onnxruntime', 3)
    assert first['frames'] == second['frames']
