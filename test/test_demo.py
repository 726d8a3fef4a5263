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


def test_make_demo_runs_the_real_node(tmp_path, official_weights):
    venv = Path(sys.executable).parent.parent
    env = dict(os.environ, ROS_DOMAIN_ID='66', ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST')
    out = tmp_path / 'demo'
    # -o: the venv running these tests is already set up; never rebuild it from a test.
    result = subprocess.run(
        ['make', '--no-print-directory', '-o', f'{venv}/.evit_ros_installed', 'demo',
         f'VENV={venv}', 'FRAMES=4', f'OUT={out}'],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    stdout = result.stdout
    report = json.loads((out / 'report.json').read_text())
    # The backend is auto's choice, as the node's; the line names the one that ran.
    assert report['backend'] in ('tensorrt', 'onnxruntime', 'torch')
    assert (f"node replay of 4 frames: b0-cityscapes on {report['backend']}/cpu fp32, network "
            f"512x1024") in stdout
    assert 'latency (ms)' in stdout and 'pipeline (publish to label map back)' in stdout
    assert f'report:     {out}/report.json' in stdout
    assert f'label maps: {out}/labels (topic /camera/image/label_map)' in stdout
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
])
def test_demo_argument_errors(official_weights, capsys, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    assert main(['demo'] + args) == 1
    assert message in capsys.readouterr().err
