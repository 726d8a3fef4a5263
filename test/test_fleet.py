"""``evit-ros evaluate`` over a fleet of real bags, on real Dask clusters on 127.0.0.1.

The 101 real CamVid val frames are split into five bags of different storage kinds and
encodings (mcap / sqlite3; rgb8, bgr8 and lossless png, so every bag holds exactly the
pixels of the files), next to a corrupt bag and a bag without the camera topic. They are
scored with the official checkpoint at 192x256, one inference thread per worker, so that
every run here gives the same label maps bit for bit.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import REPO, require_shared
from evit_ros.cli import main
from evit_ros.eval.fleet import bag_id, find_bags, FleetError, load_result
from evit_ros.eval.make_bag import folder_frames, list_images, pair_labels, write_bag
from evit_ros.eval.replay import replay, ReplayOptions

TOPIC = '/camvid/image'
NETWORK = '192x256'
#: (name, storage, encoding, first frame, frames)
DRIVES = [('drive_0', 'mcap', 'rgb8', 0, 20), ('drive_1', 'sqlite3', 'bgr8', 20, 20),
          ('drive_2', 'mcap', 'png', 40, 20), ('drive_3', 'sqlite3', 'png', 60, 20),
          ('drive_4', 'mcap', 'bgr8', 80, 21)]
BIN = Path(sys.executable).parent


@pytest.fixture(scope='session')
def fleet_env(tmp_path_factory):
    """Weights from ../shared, and one ONNX cache for the session (exported once)."""
    weights = require_shared('weights', 'efficientvit_seg_b0_cityscapes.pt').parent
    cache = tmp_path_factory.mktemp('fleet_cache')
    return {'EVIT_ROS_WEIGHTS_DIR': str(weights), 'EVIT_ROS_CACHE': str(cache)}


@contextlib.contextmanager
def environment(values):
    """Set environment variables for the work of a session fixture only."""
    # Not for the whole session: other test files must not inherit the weights folder.
    with pytest.MonkeyPatch.context() as patch:
        for key, value in values.items():
            patch.setenv(key, value)
        yield


@pytest.fixture(autouse=True)
def same_cache(fleet_env, monkeypatch):
    """Undo conftest's per-test cache: the fleet's workers share the session's."""
    for key, value in fleet_env.items():
        monkeypatch.setenv(key, value)


@pytest.fixture(scope='session')
def fleet(tmp_path_factory):
    """The bags: ``bags/`` (five drives, a corrupt one, one without the topic), ``all``."""
    images = list_images(require_shared('data', 'camvid', 'val'))
    pairs = pair_labels(images, require_shared('data', 'camvid', 'valannot'), 'camvid')
    assert len(images) == 101 and len(pairs) == 101
    root = tmp_path_factory.mktemp('fleet')
    bags = root / 'bags'
    bags.mkdir()
    start = 1_600_000_000 * 10**9
    for name, storage, encoding, first, count in DRIVES:
        write_bag(folder_frames(images[first:first + count], pairs), bags / name, TOPIC,
                  encoding=encoding, storage=storage, label_format='camvid',
                  start_ns=start + first * 10**8)
    (bags / 'broken').mkdir()
    (bags / 'broken' / 'broken_0.mcap').write_bytes(b'\x89MCAP0\r\n' + b'not a bag ' * 50)
    write_bag(folder_frames(images[:2], {}), bags / 'other_topic', '/front/image')
    whole = write_bag(folder_frames(images, pairs), root / 'all', TOPIC,
                      label_format='camvid', start_ns=start)
    assert whole.frames == 101
    return root


@pytest.fixture(scope='session')
def one_replay(fleet, fleet_env, tmp_path_factory):
    """``replay`` of the 101 frames as one bag: the reference."""
    out = tmp_path_factory.mktemp('replay') / 'out'
    with environment(fleet_env):
        report = replay(ReplayOptions(fleet / 'all', TOPIC, out, backend='auto',
                                      network_size=(192, 256), progress=False))
    return report, out


def evaluate(*args) -> int:
    return main(['evaluate', *map(str, args), '--image-topic', TOPIC, '--network-size',
                 NETWORK, '--threads', '1', '--no-progress'])


@pytest.fixture(scope='session')
def local_cluster_run(fleet, fleet_env, tmp_path_factory):
    """The fleet on the default local cluster (two worker processes): (exit code, out)."""
    out = tmp_path_factory.mktemp('local') / 'out'
    with environment(fleet_env):
        before = dict(os.environ)
        code = evaluate(fleet / 'bags', '--workers', 2, '--out', out)
        # Dask's nannies write OMP_NUM_THREADS=1 and more into this process's environment;
        # evaluate gives it back (a node started afterwards ran torch on one thread).
        assert dict(os.environ) == before
    return code, out


def frames_csv(path):
    rows = [line.split(',') for line in Path(path).read_text().splitlines()[1:]]
    return rows


def results(out, bags):
    return {Path(p).name: load_result(Path(out) / 'bags', p) for p in bags}


def drive_paths(fleet):
    return [fleet / 'bags' / name for name, *_ in DRIVES]


def assert_same_frames(a, b):
    """Two results of one bag: equal confusion matrix and per-frame scores."""
    assert a.frames == b.frames and a.frames_scored == b.frames_scored
    assert np.array_equal(a.confusion, b.confusion)
    assert np.array_equal(a.frame_index, b.frame_index)
    assert np.array_equal(a.frame_stamp, b.frame_stamp)
    assert np.array_equal(a.frame_miou, b.frame_miou, equal_nan=True)
    assert np.array_equal(a.frame_accuracy, b.frame_accuracy, equal_nan=True)


def test_find_bags(fleet, tmp_path):
    bags = fleet / 'bags'
    assert [p.name for p in find_bags([str(bags)])] == [
        'broken', 'drive_0', 'drive_1', 'drive_2', 'drive_3', 'drive_4', 'other_topic']
    assert [p.name for p in find_bags([str(bags / 'drive_[13]')])] == ['drive_1', 'drive_3']
    listing = tmp_path / 'bags.txt'
    listing.write_text(f'# the two first drives\n{bags / "drive_0"}\n\n'
                       f'{os.path.relpath(bags / "drive_1", tmp_path)}  # relative\n'
                       f'{bags / "drive_0"}\n')
    found = find_bags([str(listing), str(bags / 'drive_2')])
    assert found == [bags / 'drive_0', bags / 'drive_1', bags / 'drive_2']
    assert [p.name for p in find_bags([str(bags / 'drive_0' / 'drive_0.mcap')])] == [
        'drive_0.mcap']
    with pytest.raises(FleetError, match='does not exist'):
        find_bags([str(tmp_path / 'nowhere')])
    with pytest.raises(FleetError, match='no bags match'):
        find_bags([str(bags / 'nothing_*')])
    (tmp_path / 'empty').mkdir()
    with pytest.raises(FleetError, match='holds no bags'):
        find_bags([str(tmp_path / 'empty')])
    assert bag_id(bags / 'drive_0') != bag_id(fleet / 'drive_0')


def test_fleet_miou_equals_one_replay_of_all_frames(local_cluster_run, one_replay, fleet):
    code, out = local_cluster_run
    reference, reference_out = one_replay
    report = json.loads((out / 'report.json').read_text())
    assert code == 1  # two bags failed
    # The confusion matrices summed over the bags: exactly the one replay's numbers.
    assert (report['frames'], report['frames_scored']) == (101, 101)
    assert report['miou'] == reference['miou']
    assert report['pixel_accuracy'] == reference['pixel_accuracy']
    assert report['per_class_iou'] == reference['per_class_iou']
    assert report['backend'] == reference['backend'] and report['device'] == 'cpu'
    assert report['precision'] == 'fp32' and report['network_size'] == [192, 256]
    assert report['latency_ms']['count'] == 101
    assert report['miou'] * 100 == pytest.approx(42.72, abs=0.05)  # README, 192x256
    # ... and frame for frame, in the order of the concatenated recording.
    fleet_rows = frames_csv(out / 'frames.csv')
    replay_rows = frames_csv(reference_out / 'frames.csv')
    assert [r[3:5] for r in fleet_rows] == [r[3:5] for r in replay_rows]
    assert [r[2] for r in fleet_rows] == [r[1] for r in replay_rows]  # stamps
    # Per bag: status, reason, frames; the per-bag matrices add up to the fleet's.
    bags = {Path(b['path']).name: b for b in report['bags']}
    assert [b['status'] for b in report['bags']] == ['failed'] + ['ok'] * 5 + ['failed']
    assert 'cannot read' in bags['broken']['reason'] and '\n' not in bags['broken']['reason']
    assert "no image topic '/camvid/image'" in bags['other_topic']['reason']
    assert [bags[name]['frames'] for name, *_ in DRIVES] == [20, 20, 20, 20, 21]
    recorded = results(out, drive_paths(fleet))
    assert sum(r.confusion for r in recorded.values()).tolist() == report['confusion_matrix']
    for name, result in recorded.items():
        assert bags[name]['miou'] == pytest.approx(result.miou(), abs=0)
    # Two worker processes, each built its model once and kept it for its next bags.
    workers = {r.worker for r in recorded.values()}
    assert 1 <= len(workers) <= 2 and all('127.0.0.1' in w for w in workers)
    assert {r.model_builds for r in recorded.values()} == {1}
    assert report['cluster']['local'] and report['cluster']['workers'] == 2
    # The worst frames are the lowest per-frame mIoU of the whole fleet.
    lowest = sorted(float(r[3]) for r in fleet_rows)[:len(report['worst_frames'])]
    assert [round(w['miou'], 6) for w in report['worst_frames']] == lowest
    markdown = (out / 'report.md').read_text()
    assert f"| mIoU | {report['miou'] * 100:.2f} |" in markdown
    for name, *_ in DRIVES:
        assert f"`{fleet / 'bags' / name}` | ok | {bags[name]['frames']} |" in markdown
    for name in report['outputs']['plots']:
        image = cv2.imread(name)
        assert image is not None and image.shape[0] > 200


def test_scheduler_and_two_workers_match_the_sequential_run(fleet, fleet_env, tmp_path):
    """A real ``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1."""
    env = dict(os.environ, **fleet_env)
    info = tmp_path / 'scheduler.json'
    procs = [subprocess.Popen([str(BIN / 'dask'), 'scheduler', '--host', '127.0.0.1',
                               '--port', '0', '--no-dashboard', '--scheduler-file', str(info)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.monotonic() + 60
        while not info.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        address = json.loads(info.read_text())['address']
        assert address.startswith('tcp://127.0.0.1:')
        for _ in range(2):
            procs.append(subprocess.Popen(
                [str(BIN / 'dask'), 'worker', address, '--host', '127.0.0.1', '--nworkers',
                 '1', '--nthreads', '1', '--no-dashboard', '--local-directory',
                 str(tmp_path)], env=env, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL))
        from distributed import Client
        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
        distributed = tmp_path / 'distributed'
        assert evaluate(fleet / 'bags', '--scheduler', address, '--out', distributed) == 1
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    sequential = tmp_path / 'sequential'
    assert evaluate(fleet / 'bags', '--workers', 0, '--out', sequential) == 1
    report = json.loads((distributed / 'report.json').read_text())
    assert report['cluster']['scheduler'] == address and not report['cluster']['local']
    assert report['miou'] == json.loads((sequential / 'report.json').read_text())['miou']
    remote = results(distributed, drive_paths(fleet))
    local = results(sequential, drive_paths(fleet))
    for name in remote:
        assert_same_frames(remote[name], local[name])
    # Both workers took bags, and each built its model once.
    assert len({r.worker for r in remote.values()}) == 2
    assert {r.model_builds for r in remote.values()} == {1}
    assert [b['status'] for b in report['bags']] == ['failed'] + ['ok'] * 5 + ['failed']


def test_resume_after_ctrl_c_then_force(fleet, local_cluster_run, tmp_path, capsys):
    _, reference_out = local_cluster_run
    reference = json.loads((reference_out / 'report.json').read_text())
    out = tmp_path / 'out'
    records = out / 'bags'
    command = [str(BIN / 'evit-ros'), 'evaluate', str(fleet / 'bags'), '--image-topic', TOPIC,
               '--network-size', NETWORK, '--threads', '1', '--workers', '1', '--out',
               str(out)]
    log = tmp_path / 'interrupted.log'
    with open(log, 'w') as stderr:
        proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr,
                                start_new_session=True)
    done = []
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            done = [p for p in drive_paths(fleet) if load_result(records, p) is not None]
            if done:
                break
            time.sleep(0.05)
        # Ctrl-C as a terminal sends it: to the client and its local cluster's workers.
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=120) == 130
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert 'Traceback' not in log.read_text()
    partial = json.loads((out / 'report.json').read_text())
    assert partial['interrupted'] == 'SIGINT' and 'run again to go on' in partial['error']
    assert 1 <= partial['bags_ok'] < len(DRIVES)
    capsys.readouterr()
    done = [p for p in drive_paths(fleet) if load_result(records, p) is not None]
    assert evaluate(fleet / 'bags', '--workers', 0, '--out', out) == 1
    err = capsys.readouterr().err
    assert f'skipping {len(done)} of 7 bags evaluated by an earlier run' in err
    report = json.loads((out / 'report.json').read_text())
    status = {Path(b['path']).name: b['status'] for b in report['bags']}
    assert {name for name, s in status.items() if s == 'skipped'} == {p.name for p in done}
    assert report['bags_ok'] == len(DRIVES) - len(done) and report['bags_failed'] == 2
    assert report['miou'] == reference['miou']
    assert report['confusion_matrix'] == reference['confusion_matrix']
    # Recorded thumbnails are merged too: the same worst frames across the fleet.
    assert report['worst_frames'] == reference['worst_frames']
    # Other settings do not mix with what is recorded ...
    assert main(['evaluate', str(fleet / 'bags'), '--image-topic', TOPIC, '--network-size',
                 '256x352', '--workers', '0', '--out', str(out), '--no-progress']) == 1
    err = capsys.readouterr().err
    assert 'made with other settings' in err and '--force' in err and len(err.splitlines()) == 1
    # ... and --force redoes every bag.
    before = {p.name: json.loads((records / f'{bag_id(p)}.json').read_text())['recorded']
              for p in done}
    time.sleep(1.1)
    assert evaluate(fleet / 'bags', '--workers', 0, '--out', out, '--force') == 1
    err = capsys.readouterr().err
    assert 'skipping' not in err
    report = json.loads((out / 'report.json').read_text())
    assert [b['status'] for b in report['bags']] == ['failed'] + ['ok'] * 5 + ['failed']
    assert report['miou'] == reference['miou']
    for path in done:
        after = json.loads((records / f'{bag_id(path)}.json').read_text())['recorded']
        assert after != before[path.name]


def test_a_model_that_cannot_be_built_stops_the_run_in_one_line(fleet, tmp_path, capsys):
    out = tmp_path / 'out'
    code = evaluate(fleet / 'bags' / 'drive_0', '--workers', 0, '--out', out, '--weights',
                    tmp_path / 'missing.pt')
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1].startswith('evit-ros evaluate: error: cannot build the model')
    assert 'missing.pt' in err[-1] and 'Traceback' not in '\n'.join(err)
    assert not list((out / 'bags').glob('*.json'))  # no bag is blamed for it
