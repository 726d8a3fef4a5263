"""``evit-ros export`` and ``evit-ros bench``: files, numbers and one-line errors."""

import json
import os
import subprocess
import sys

from conftest import REPO
import cv2
import numpy as np
import onnx
import pytest

from evit_ros.cli import main


# PyTorch single-threaded here: same results, steady times on a loaded machine.
pytestmark = pytest.mark.usefixtures('one_torch_thread')


@pytest.fixture
def image_file(tmp_path):
    """A small PNG frame."""
    path = tmp_path / 'frame.png'
    rgb = np.random.default_rng(0).integers(0, 256, (90, 160, 3), dtype=np.uint8)
    cv2.imwrite(str(path), rgb)
    return path


def test_export_writes_a_checked_file_and_says_so(tmp_path, image_file, capsys):
    out = tmp_path / 'b0.onnx'
    code = main(['export', '--model', 'b0-cityscapes', '--weights', 'none', '--height', '64',
                 '--width', '128', '-o', str(out), '--image', str(image_file)])
    assert code == 0
    proto = onnx.load(str(out))
    assert [i.name for i in proto.graph.input] == ['image']
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta['model'] == 'b0-cityscapes' and meta['weights'] == 'random'
    line = capsys.readouterr().out.strip()
    assert line.startswith(f'{out}: fp32, ') and 'input "image" Nx3x64x128 float32' in line
    assert 'output "logits" Nx19x8x16' in line and 'argmax agreement 100.0000%' in line
    assert (tmp_path / 'b0.onnx.json').is_file()


@pytest.mark.parametrize('argv, message', [
    (['--height', '100'], 'not a multiple of 32'),
    (['--model', 'b9-nowhere'], 'unknown model'),
    (['--image', '/nonexistent.png'], 'cannot read image /nonexistent.png'),
])
def test_export_errors_are_one_line(tmp_path, capsys, argv, message):
    args = {'--model': 'b0-cityscapes', '--weights': 'none', '--height': '64',
            '--width': '64', '-o': str(tmp_path / 'x.onnx')}
    args.update(dict(zip(argv[::2], argv[1::2])))
    code = main(['export'] + [item for pair in args.items() for item in pair])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith('evit-ros export: error: ') and message in err
    assert err.count('\n') == 1
    assert not (tmp_path / 'x.onnx').exists()


def test_bench_reports_latency_machine_and_versions(tmp_path, image_file, capsys):
    report = tmp_path / 'bench.json'
    code = main(['bench', '--model', 'b0-cityscapes', '--weights', 'none', '--backend',
                 'onnxruntime', '--height', '64', '--width', '128', '--runs', '4', '--warmup',
                 '1', '--threads', '1', '--image', str(image_file), '--json', str(report)])
    assert code == 0
    result = json.loads(report.read_text())
    latency = result['latency']
    assert latency['runs'] == 4
    assert latency['min_ms'] <= latency['median_ms'] <= latency['p90_ms'] <= latency['p99_ms']
    assert latency['fps'] == pytest.approx(1000.0 / latency['median_ms'])
    assert set(latency['phases_ms']) == {'preprocess', 'inference', 'postprocess'}
    assert sum(latency['phases_ms'].values()) <= latency['p99_ms'] * 1.01
    assert (result['backend'], result['postprocess']) == ('onnxruntime', 'fast')
    assert result['input_size'] == [64, 128] and result['image_size'] == [90, 160]
    assert result['machine']['cores_available'] == len(os.sched_getaffinity(0))
    assert result['versions']['onnxruntime'] and result['versions']['torch']
    out = capsys.readouterr().out
    assert 'segment(): median' in out and 'fps' in out and 'machine:' in out


def test_bench_refuses_what_the_backend_cannot_do(capsys):
    code = main(['bench', '--model', 'b0-cityscapes', '--weights', 'none', '--backend',
                 'torch', '--precision', 'fp16', '--height', '64', '--width', '64'])
    err = capsys.readouterr().err
    assert code == 1 and 'fp16 needs CUDA' in err and err.count('\n') == 1


def test_console_script_runs_export(tmp_path):
    out = tmp_path / 'm.onnx'
    result = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), 'evit-ros'), 'export', '--model',
         'b0-cityscapes', '--weights', 'none', '--height', '64', '--width', '64', '-o',
         str(out)], capture_output=True, text=True, timeout=300, cwd=REPO,
        env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert result.returncode == 0, result.stderr
    assert out.is_file() and 'matches PyTorch' in result.stdout
