"""``evit-ros replay`` on real bags: CamVid accuracy offline, the real node over DDS, signals.

The CamVid bag (101 real frames with labels) is made once per session and replayed offline
at 736x960 (the published protocol) and through a real ``segmentation_node`` process.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from conftest import official_checkpoint, REPO, require_shared
from ros_harness import next_domain_id
from evit_ros.cli import main
from evit_ros.eval.bags import BagReader
from evit_ros.eval.labels import MAPPINGS
from evit_ros.eval.make_bag import make_bag
from evit_ros.eval.metrics import ConfusionMatrix
from evit_ros.eval.replay import replay, ReplayError, ReplayOptions

TOPIC = '/camvid/image'
LABEL_MAP_TOPIC = '/camvid/image/label_map'
NETWORK = (736, 960)


@pytest.fixture(scope='session')
def checkpoint():
    return official_checkpoint()


@pytest.fixture(scope='session')
def camvid_bag(tmp_path_factory):
    """The 101 CamVid val frames with their labels, as one mcap bag."""
    images = require_shared('data', 'camvid', 'val')
    labels = require_shared('data', 'camvid', 'valannot')
    bag = tmp_path_factory.mktemp('camvid') / 'camvid'
    result = make_bag(images, bag, TOPIC, labels_dir=labels, label_format='camvid', rate=10,
                      start_ns=1_600_000_000 * 10**9)
    assert (result.frames, result.labelled) == (101, 101)
    return bag


@pytest.fixture(scope='session')
def offline(camvid_bag, checkpoint, tmp_path_factory):
    """The offline replay of the whole CamVid bag at 736x960: (report, out folder)."""
    out = tmp_path_factory.mktemp('offline') / 'out'
    report = replay(ReplayOptions(camvid_bag, TOPIC, out, weights=str(checkpoint),
                                  network_size=NETWORK, progress=False))
    return report, out


def label_maps(bag, topic=LABEL_MAP_TOPIC):
    with BagReader(bag) as reader:
        return {f.stamp_ns: f for _, f in reader.frames(topic)}


@pytest.fixture
def ros_env(monkeypatch):
    monkeypatch.setenv('ROS_DOMAIN_ID', str(next_domain_id()))
    monkeypatch.setenv('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')


def test_offline_camvid_miou(offline, camvid_bag, checkpoint):
    report, out = offline
    assert report['miou'] * 100 == pytest.approx(69.3, abs=0.1)
    assert (report['frames'], report['frames_scored'], report['dropped']) == (101, 101, 0)
    assert report['unreadable'] == 0 and report['errors'] == []
    assert report['label_format'] == 'camvid' and len(report['classes']) == 11
    # Per-class figures of the official implementation (README of ../shared), within 0.3.
    official = {'Sky': 92.2, 'Building': 86.8, 'Road': 96.2, 'Car': 89.2, 'Bicyclist': 78.9}
    for name, value in official.items():
        assert report['per_class_iou'][name] * 100 == pytest.approx(value, abs=0.3)
    assert report['network_size'] == list(NETWORK)
    stats = report['latency_ms']
    assert stats['count'] == 101 and stats['p50'] <= stats['p90'] <= stats['p99'] <= stats['max']
    assert json.loads((out / 'report.json').read_text()) == report
    assert f"| mIoU | {report['miou'] * 100:.2f} |" in (out / 'report.md').read_text()
    rows = (out / 'frames.csv').read_text().splitlines()
    assert len(rows) == 102 and rows[0].startswith('index,stamp_ns,scored,miou')
    for name in ('per_class_iou.png', 'latency.png', 'samples.png'):
        image = cv2.imread(str(out / name))
        assert image is not None and image.shape[0] > 200
    # The label-map bag: one mono8 map per input, at input size, stamped like the inputs.
    maps = label_maps(out / 'labels')
    inputs = label_maps(camvid_bag, TOPIC)
    assert sorted(maps) == sorted(inputs)
    for stamp, frame in maps.items():
        assert frame.encoding == 'mono8' and frame.image.shape == (360, 480)
        assert frame.bag_time_ns == inputs[stamp].bag_time_ns
        assert frame.frame_id == 'camera'
    # ... and exactly what the Segmenter gives for a frame.
    from evit_ros.runtime import Segmenter
    first = min(inputs)
    segmenter = Segmenter('b0-cityscapes', input_size=NETWORK, weights=str(checkpoint))
    assert np.array_equal(segmenter.segment(inputs[first].image, 'rgb8'), maps[first].image)


def test_node_mode_gives_the_offline_predictions(offline, camvid_bag, checkpoint, tmp_path,
                                                 ros_env):
    _, offline_out = offline
    frames = 12
    report = replay(ReplayOptions(camvid_bag, TOPIC, tmp_path / 'node', weights=str(checkpoint),
                                  network_size=NETWORK, mode='node', rate=3.0,
                                  max_frames=frames, progress=False))
    node_maps = label_maps(tmp_path / 'node' / 'labels')
    offline_maps = label_maps(offline_out / 'labels')
    assert report['frames'] == frames
    assert report['frames_scored'] == len(node_maps) >= 1
    assert report['frames_scored'] + report['dropped'] == frames
    # Exactly the offline label map, stamp and bag time, for every frame that came back.
    inputs = label_maps(camvid_bag, TOPIC)
    matrix = ConfusionMatrix(11)
    labels = label_maps(camvid_bag, TOPIC + '/label_gt')
    for stamp, frame in node_maps.items():
        assert np.array_equal(frame.image, offline_maps[stamp].image)
        assert frame.bag_time_ns == inputs[stamp].bag_time_ns
        matrix.update(MAPPINGS['camvid'].ground_truth(labels[stamp].image),
                      MAPPINGS['camvid'].prediction(frame.image))
    assert report['miou'] == pytest.approx(matrix.miou(), abs=1e-12)
    assert report['pipeline_latency_ms']['count'] == report['frames_scored']
    assert report['latency_ms']['p50'] > 0 and report['node_latency_ms']['p50'] > 0
    assert report['backend'] == 'torch' and report['mode'] == 'node'
    assert 'listening on /camvid/image' in (tmp_path / 'node' / 'node.log').read_text()


def test_node_start_up_failure_is_one_line(camvid_bag, checkpoint, tmp_path, ros_env):
    options = ReplayOptions(camvid_bag, TOPIC, tmp_path / 'out', weights=str(checkpoint),
                            backend='tensorrt', mode='node', max_frames=2, progress=False)
    with pytest.raises(ReplayError) as error:
        replay(options)
    text = str(error.value)
    assert text.startswith('segmentation_node exited with status ')
    assert 'segmentation_node: error: ' in text and '\n' not in text


@pytest.mark.parametrize('sig,code', [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_writes_a_partial_report(camvid_bag, checkpoint, tmp_path, sig, code):
    out = tmp_path / 'out'
    cli = os.path.join(os.path.dirname(sys.executable), 'evit-ros')
    proc = subprocess.Popen(
        [cli, 'replay', str(camvid_bag), '--image-topic', TOPIC, '--weights', str(checkpoint),
         '--network-size', '736x960', '--out', str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    try:
        deadline = time.monotonic() + 120
        while not (out / 'labels').exists() and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.1)
        time.sleep(1.5)
        proc.send_signal(sig)
        signalled = time.monotonic()
        while proc.poll() is None and time.monotonic() - signalled < 60:
            time.sleep(0.02)
        stopped_after = time.monotonic() - signalled
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, stderr.decode()
    # Stops within 2 s of the signal, partial report and bag written, no plots.
    assert stopped_after < 2.0, f'replay took {stopped_after:.2f} s to stop'
    assert f'interrupted by {sig.name}: partial report' in stderr.decode()
    report = json.loads((out / 'report.json').read_text())
    assert report['interrupted'] == sig.name
    assert 0 < report['frames'] < 101
    # It lists only what it wrote: no plot files, none named.
    assert report['outputs']['plots'] == []
    assert not any(out.glob('*.png'))
    assert 'plots:      none (the run was interrupted)' in stdout.decode()
    assert '.png' not in (out / 'report.md').read_text()
    # The label-map bag was closed properly and holds every frame scored.
    assert len(label_maps(out / 'labels')) == report['frames_scored'] == report['frames']


def test_tiny_bag_with_out_of_range_stamps(checkpoint, tmp_path):
    tiny = require_shared('data', 'rosbag2_sqlite_tiny')
    report = replay(ReplayOptions(tiny, '/image', tmp_path / 'out', weights=str(checkpoint),
                                  network_size=(64, 64), out_storage='sqlite3',
                                  progress=False))
    assert (report['frames'], report['frames_scored'], report['miou']) == (3, 0, None)
    assert report['label_source'] == 'none'
    maps = label_maps(tmp_path / 'out' / 'labels', '/image/label_map')
    assert sorted(maps) == [0, 10**9, 2 * 10**9]
    assert all(f.image.shape == (2, 2) for f in maps.values())
    assert any(p.suffix == '.db3' for p in (tmp_path / 'out' / 'labels').iterdir())


def test_label_folder_and_existing_output(camvid_bag, checkpoint, tmp_path, capsys):
    images = require_shared('data', 'camvid', 'val')
    labels = require_shared('data', 'camvid', 'valannot')
    bag = tmp_path / 'plain'
    make_bag(images, bag, TOPIC, max_frames=3)
    args = ['replay', str(bag), '--image-topic', TOPIC, '--weights', str(checkpoint),
            '--network-size', '96x128', '--out', str(tmp_path / 'a')]
    assert main(args + ['--labels', str(labels), '--label-format', 'camvid']) == 0
    by_folder = json.loads((tmp_path / 'a' / 'report.json').read_text())
    assert by_folder['frames_scored'] == 3 and by_folder['label_format'] == 'camvid'
    # The same frames scored from the labels inside the CamVid bag give the same numbers.
    assert main(['replay', str(camvid_bag), '--image-topic', TOPIC, '--weights',
                 str(checkpoint), '--network-size', '96x128', '--max-frames', '3', '--out',
                 str(tmp_path / 'b')]) == 0
    by_topic = json.loads((tmp_path / 'b' / 'report.json').read_text())
    assert by_topic['label_source'] == TOPIC + '/label_gt'
    assert by_topic['per_class_iou'] == by_folder['per_class_iou']
    capsys.readouterr()
    # An existing output folder is refused in one line; --force replaces only our files.
    (tmp_path / 'a' / 'mine.txt').write_text('keep')
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err == (f"evit-ros replay: error: output directory {tmp_path / 'a'} exists; pass "
                   f"--force to overwrite it or choose another --out")
    assert main(args + ['--force']) == 0
    assert (tmp_path / 'a' / 'mine.txt').read_text() == 'keep'
    assert json.loads((tmp_path / 'a' / 'report.json').read_text())['frames_scored'] == 0


def test_bad_bags_give_one_line_or_a_partial_score(camvid_bag, checkpoint, tmp_path, capsys):
    base = ['--weights', str(checkpoint), '--network-size', '96x128']
    assert main(['replay', str(camvid_bag), '--image-topic', '/camera/image', '--out',
                 str(tmp_path / 'x')] + base) == 1
    err = capsys.readouterr().err.strip()
    assert err == (f"evit-ros replay: error: no image topic '/camera/image'; bag {camvid_bag} "
                   f"has: /camvid/image (sensor_msgs/msg/Image, 101 msgs), "
                   f"/camvid/image/label_gt (sensor_msgs/msg/Image, 101 msgs)")
    assert not (tmp_path / 'x').exists()
    # A bag cut short (a recorder that crashed): what is intact is replayed and scored.
    cut = tmp_path / 'cut'
    shutil.copytree(camvid_bag, cut)
    mcap = next(cut.glob('*.mcap'))
    os.truncate(mcap, mcap.stat().st_size // 20)
    assert main(['replay', str(cut), '--image-topic', TOPIC, '--out', str(tmp_path / 'y')]
                + base) == 0
    report = json.loads((tmp_path / 'y' / 'report.json').read_text())
    assert 0 < report['frames'] < 101
    assert report['frames_scored'] >= report['frames'] - 1
    assert 'is damaged' in report['errors'][0]
    assert report['unreadable'] == len(report['errors'])


def test_node_mode_forwards_compressed_images(checkpoint, tmp_path, ros_env):
    images = require_shared('data', 'camvid', 'val')
    labels = require_shared('data', 'camvid', 'valannot')
    topic = '/cam/image/compressed'
    bag = tmp_path / 'jpeg'
    make_bag(images, bag, topic, labels_dir=labels, label_format='camvid', encoding='jpeg',
             max_frames=3)
    reports = {}
    for mode in ('offline', 'node'):
        reports[mode] = replay(ReplayOptions(bag, topic, tmp_path / mode, weights=str(checkpoint),
                                             network_size=(96, 128), mode=mode, lockstep=True,
                                             progress=False))
    # Lockstep: nothing dropped; the node decodes the same JPEG bytes to the same labels.
    assert reports['node']['frames_scored'] == 3 and reports['node']['dropped'] == 0
    assert reports['node']['label_source'] == '/cam/image/label_gt'
    offline_maps = label_maps(tmp_path / 'offline' / 'labels', '/cam/image/label_map')
    node_maps = label_maps(tmp_path / 'node' / 'labels', '/cam/image/label_map')
    assert sorted(node_maps) == sorted(offline_maps) and len(node_maps) == 3
    for stamp, frame in node_maps.items():
        assert np.array_equal(frame.image, offline_maps[stamp].image)
    assert reports['node']['miou'] == reports['offline']['miou']


def _numbers_are_numbers(value, where='report'):
    """Fail on a number stored as a string anywhere in a report (e.g. ``"0"``)."""
    if isinstance(value, dict):
        for key, item in value.items():
            _numbers_are_numbers(item, f'{where}.{key}')
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _numbers_are_numbers(item, f'{where}[{i}]')
    elif isinstance(value, str):
        assert not re.fullmatch(r'-?\d+(\.\d*)?(e-?\d+)?|nan|inf', value.strip().lower()), (
            f'{where} is the string {value!r}, not a number')


def _final_progress_rate(stderr: str) -> str:
    lines = [line for line in re.split(r'[\r\n]', stderr) if line.startswith('replay [')]
    assert lines, stderr
    return re.search(r' ([\d.]+)/s ', lines[-1]).group(1)


def test_node_mode_from_a_folder_holding_an_evit_ros_folder(camvid_bag, checkpoint, tmp_path,
                                                            ros_env):
    """Run from the clone's parent folder: its ``evit_ros`` folder must not shadow the package.

    Defaults as a user gets them: backend ``auto``; the output says what ran.
    """
    cwd = tmp_path / 'parent'
    (cwd / 'evit_ros').mkdir(parents=True)
    (cwd / 'evit_ros' / '__init__.py').write_text(
        "raise ImportError('the evit_ros folder of the current directory was imported')\n")
    out = tmp_path / 'node'
    result = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), 'evit-ros'), 'replay', str(camvid_bag),
         '--image-topic', TOPIC, '--weights', str(checkpoint), '--network-size', '96x128',
         '--mode', 'node', '--lockstep', '--max-frames', '3', '--out', str(out)],
        capture_output=True, text=True, cwd=cwd, timeout=600)
    assert result.returncode == 0, result.stderr + (out / 'node.log').read_text()
    report = json.loads((out / 'report.json').read_text())
    assert (report['frames'], report['frames_scored'], report['dropped']) == (3, 3, 0)
    # What ran, read from the node, never the "auto" that was asked for.
    assert report['backend'] in ('tensorrt', 'onnxruntime', 'torch')
    assert (report['device'], report['precision']) == ('cpu', 'fp32')
    assert (f"node replay of 3 frames: b0-cityscapes on {report['backend']}/cpu fp32, "
            f"network 96x128") in result.stdout
    # Numbers are numbers; the node's own drop count is an int.
    _numbers_are_numbers(report)
    assert report['node_frames_dropped'] == 0 and type(report['node_frames_dropped']) is int
    # frames.csv: a latency for every frame, the one node mode measures.
    rows = (out / 'frames.csv').read_text().splitlines()
    header = rows[0].split(',')
    assert len(rows) == 4
    for row in rows[1:]:
        cells = dict(zip(header, row.split(',')))
        assert float(cells['latency_ms']) == float(cells['pipeline_latency_ms']) > 0
    # The progress bar ends on the report's throughput.
    assert _final_progress_rate(result.stderr) == f"{report['throughput_fps']:.1f}"
    assert f"throughput {report['throughput_fps']:.2f} frames/s" in result.stdout


@pytest.mark.parametrize('sig,code', [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_node_mode_stops_within_two_seconds(camvid_bag, checkpoint, tmp_path, ros_env, sig,
                                            code):
    out = tmp_path / 'out'
    proc = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), 'evit-ros'), 'replay', str(camvid_bag),
         '--image-topic', TOPIC, '--weights', str(checkpoint), '--network-size', '96x128',
         '--backend', 'torch', '--mode', 'node', '--rate', '4', '--out', str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 300
        log = out / 'node.log'
        while not (log.exists() and 'listening on' in log.read_text()):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.1)
        time.sleep(3.0)  # frames flowing
        proc.send_signal(sig)
        signalled = time.monotonic()
        while proc.poll() is None and time.monotonic() - signalled < 60:
            time.sleep(0.02)
        stopped_after = time.monotonic() - signalled
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, stderr.decode()
    assert stopped_after < 2.0, f'replay took {stopped_after:.2f} s to stop'
    report = json.loads((out / 'report.json').read_text())
    assert report['interrupted'] == sig.name and 0 < report['frames'] < 101
    assert report['outputs']['plots'] == [] and not any(out.glob('*.png'))
    assert len(label_maps(out / 'labels')) == report['frames_scored']


def test_network_size_follows_the_camera():
    from evit_ros.eval.replay import network_size_for
    assert network_size_for((1024, 2048), (1024, 2048)) == (1024, 2048)
    assert network_size_for((1024, 2048), (512, 1024)) == (1024, 2048)
    assert network_size_for((1024, 2048), (360, 480)) == (1248, 1664)     # 4:3, not 2:1
    assert network_size_for((1024, 2048), (720, 1280)) == (1088, 1920)    # 16:9
    assert network_size_for((512, 512), (480, 640)) == (448, 576)
    for frame in [(360, 480), (720, 1280), (1080, 1920), (480, 640), (100, 3000)]:
        height, width = network_size_for((1024, 2048), frame)
        assert height % 32 == 0 and width % 32 == 0
        assert abs(height / width - frame[0] / frame[1]) < 0.05 * frame[0] / frame[1] + 0.02


def test_offline_default_network_size_fits_the_camera(camvid_bag, checkpoint, tmp_path):
    """No --network-size: CamVid's 360x480 frames are not stretched to the model's 2:1."""
    report = replay(ReplayOptions(camvid_bag, TOPIC, tmp_path / 'out', weights=str(checkpoint),
                                  max_frames=1, progress=False))
    assert report['network_size'] == [1248, 1664]
    assert report['network_size_source'].startswith(
        "chosen for 360x480 frames: their aspect ratio at about the pixel count of "
        "b0-cityscapes's default 1024x2048")
    maps = label_maps(tmp_path / 'out' / 'labels')
    assert [f.image.shape for f in maps.values()] == [(360, 480)]
    from evit_ros.cli.bags import summary
    assert 'network size 1248x1664 chosen for 360x480 frames' in summary(report)


def test_samples_have_a_class_legend(camvid_bag, tmp_path):
    from evit_ros.eval.plots import legend_classes, plot_samples
    from evit_ros.eval.scoring import Sample, Scorer
    from evit_ros.model import get_entry
    mapping = MAPPINGS['camvid']
    names = list(mapping.classes(()))
    truths = label_maps(camvid_bag, TOPIC + '/label_gt')
    inputs = label_maps(camvid_bag, TOPIC)
    stamps = sorted(inputs)[:2]
    # Real CamVid labels stand in for both rows; the legend only reads their classes.
    samples = [Sample(i, inputs[s].image, mapping.ground_truth(truths[s].image),
                      mapping.ground_truth(truths[s].image)) for i, s in enumerate(stamps)]
    palette = Scorer(mapping, names, get_entry('b0-cityscapes').palette).palette()
    shown = plot_samples(tmp_path / 'samples.png', samples, palette, class_names=names)
    present = sorted({int(v) for s in samples for v in np.unique(s.ground_truth)
                      if v < len(names)})
    assert legend_classes(samples, names) == present and len(present) >= 5
    assert shown == [names[i] for i in present]
    # The legend sits below the strip, one colour patch per class.
    image = cv2.cvtColor(cv2.imread(str(tmp_path / 'samples.png')), cv2.COLOR_BGR2RGB)
    bottom = image[int(image.shape[0] * 0.85):].reshape(-1, 3)
    for i in present:
        assert (np.abs(bottom.astype(int) - palette[i]).sum(axis=1) <= 3).any(), names[i]
    assert plot_samples(tmp_path / 'plain.png', samples, palette) == []
