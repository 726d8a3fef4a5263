"""``make demo`` / ``evit-ros demo`` and the generated sample sequence it replays."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO
from evit_ros.cli import main
from evit_ros.eval import sample
from evit_ros.eval.bags import BagReader


def test_sample_sequence_is_deterministic_and_labelled():
    frames = list(sample.sequence(3))
    again = list(sample.sequence(3))
    assert [name for name, _, _ in frames] == ['sample_0000', 'sample_0001', 'sample_0002']
    for (_, image, label), (_, image2, label2) in zip(frames, again):
        assert image.shape == (512, 1024, 3) and image.dtype == np.uint8
        assert label.shape == (512, 1024) and label.dtype == np.uint8
        assert np.array_equal(image, image2) and np.array_equal(label, label2)
        # Every drawn class is there, and nothing else (Cityscapes train ids).
        assert set(np.unique(label)) == set(sample.class_ids())
        # Sky at the top, road at the bottom centre.
        assert label[0, 512] == sample.SKY and label[-1, 512] == sample.ROAD
    # The camera moves: consecutive frames differ.
    assert np.mean(frames[0][1] != frames[1][1]) > 0.05
    # Other sizes keep the layout.
    _, small = sample.render_frame(0, (128, 256))
    assert small.shape == (128, 256) and small[0, 128] == sample.SKY


def run_make_demo(tmp_path, *args, env=None, timeout=300):
    venv = Path(sys.executable).parent.parent
    env = dict(os.environ if env is None else env, ROS_DOMAIN_ID='66',
               ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST')
    # -o: the venv running these tests is already set up; never rebuild it from a test.
    return subprocess.run(
        ['make', '--no-print-directory', '-o', f'{venv}/.evit_ros_installed', 'demo',
         f'VENV={venv}', *args], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=timeout)


#: mIoU of the first 12 CamVid val frames at 736x960 through the node (measured once with
#: `evit-ros demo --frames 12`; all 101 frames give the README's 69.27, see its demo section).
CAMVID_12_MIOU = 63.66


def test_make_demo_on_imported_camvid(tmp_path, official_weights, shared):
    """The demo's real-street path: imported CamVid files, the auto backend, the real node.

    Twelve frames instead of 101 keep the run near a minute (the ONNX export dominates);
    the 12-frame mIoU is asserted within 0.1, as the README's 101-frame figure would be.
    """
    assert main(['data', 'import', 'camvid', str(shared / 'data' / 'camvid')]) == 0
    cached = Path(os.environ['EVIT_ROS_CACHE']) / 'data' / 'camvid'
    out = tmp_path / 'demo'
    result = run_make_demo(tmp_path, 'FRAMES=12', f'OUT={out}')
    assert result.returncode == 0, result.stderr
    stdout, stderr = result.stdout, result.stderr
    assert f'demo: frames: CamVid val (real street frames) from {cached}' in stderr
    assert 'node replay of 12 frames: b0-cityscapes on onnxruntime/cpu fp32, network 736x960' \
        in stdout
    assert 'ran on: backend onnxruntime, device cpu, precision fp32' in stdout
    assert 'frames: CamVid val, 12 real street frames' in stdout
    report = json.loads((out / 'report.json').read_text())
    assert (report['frames'], report['frames_scored'], report['dropped']) == (12, 12, 0)
    assert report['label_format'] == 'camvid' and len(report['classes']) == 11
    assert abs(report['miou'] * 100 - CAMVID_12_MIOU) <= 0.1
    assert f"mIoU {report['miou'] * 100:.2f}" in stdout
    with BagReader(out / 'input_bag') as bag:
        frames = [f for _, f in bag.frames('/camera/image')]
    assert len(frames) == 12 and frames[0].image.shape == (360, 480, 3)


def test_make_demo_on_the_generated_scene(tmp_path, official_weights):
    out = tmp_path / 'demo'
    result = run_make_demo(tmp_path, 'FRAMES=4', f'OUT={out}', 'BACKEND=torch')
    assert result.returncode == 0, result.stderr
    stdout = result.stdout
    # Nothing imported into this test's cache: the generated scene, and how to get CamVid.
    assert ('demo: frames: a generated street scene (synthetic, with exact labels); for real '
            'street frames run `evit-ros data fetch camvid`') in result.stderr
    assert 'node replay of 4 frames: b0-cityscapes on torch/cpu fp32, network 512x1024' in stdout
    assert 'ran on: backend torch, device cpu, precision fp32' in stdout
    assert 'latency (ms)' in stdout and 'pipeline (publish to label map back)' in stdout
    assert f'report:     {out}/report.json' in stdout
    assert f'label maps: {out}/labels (topic /camera/image/label_map)' in stdout
    assert stdout.strip().splitlines()[-1].startswith('frames: the generated scene, a drawn '
                                                      'cartoon street')
    report = json.loads((out / 'report.json').read_text())
    assert (report['mode'], report['frames'], report['frames_scored'], report['dropped']) == (
        'node', 4, 4, 0)
    assert report['lockstep'] is True and report['label_format'] == 'trainid'
    assert 0 < report['miou'] < 1 and report['pixel_accuracy'] > 0.5
    with BagReader(out / 'input_bag') as bag:
        assert bag.topics == {'/camera/image': ('sensor_msgs/msg/Image', 4),
                              '/camera/image/label_gt': ('sensor_msgs/msg/Image', 4)}
    with BagReader(out / 'labels') as bag:
        maps = [frame for _, frame in bag.frames('/camera/image/label_map')]
    assert len(maps) == 4 and all(m.image.shape == (512, 1024) for m in maps)


def test_make_demo_checks_the_weights_before_installing(tmp_path):
    """Without weights, `make demo` says so at once and never starts the venv install."""
    venv = tmp_path / 'venv'
    env = {k: v for k, v in os.environ.items() if k != 'EVIT_ROS_WEIGHTS_DIR'}
    env['EVIT_ROS_CACHE'] = str(tmp_path / 'cache')
    result = subprocess.run(['make', '--no-print-directory', 'demo', f'VENV={venv}'], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    first = result.stderr.strip().splitlines()[0]
    assert first.startswith(f'make demo: no efficientvit_seg_b0_cityscapes.pt in '
                            f'{tmp_path}/cache/weights. Get it first: ')
    assert '`make venv && .venv/bin/evit-ros weights fetch b0-cityscapes`' in first
    assert 'weights import b0-cityscapes /path/to/efficientvit_seg_b0_cityscapes.pt' in first
    assert not venv.exists() and result.stdout == ''


def test_demo_without_weights_says_how_to_get_them(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv('EVIT_ROS_WEIGHTS_DIR', raising=False)
    # Port 9 on loopback refuses at once: this stands for a machine without network.
    monkeypatch.setenv('EVIT_ROS_WEIGHTS_URL', 'http://127.0.0.1:9/weights')
    monkeypatch.chdir(tmp_path)
    assert main(['demo']) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith('demo: no efficientvit_seg_b0_cityscapes.pt in ')
    assert len(err) == 2 and err[1].startswith('evit-ros demo: error: the demo needs the '
                                               'b0-cityscapes weights and could not fetch')
    for command in ('`evit-ros weights fetch b0-cityscapes`',
                    '`evit-ros weights import b0-cityscapes /path/to/'
                    'efficientvit_seg_b0_cityscapes.pt`', 'EVIT_ROS_WEIGHTS_DIR'):
        assert command in err[1]
    assert not (tmp_path / 'demo_out').exists()


@pytest.mark.parametrize('args,message', [
    (['--bag', 'x.mcap'], '--bag needs --topic'),
    (['--frames', '0'], '--frames must be at least 1'),
    (['--camvid', 'nowhere'], '--camvid nowhere does not hold val/ and valannot/'),
])
def test_demo_argument_errors(official_weights, capsys, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    assert main(['demo'] + args) == 1
    assert message in capsys.readouterr().err
