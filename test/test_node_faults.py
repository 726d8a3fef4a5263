"""Faults around the segmentation node, in its own process over real DDS.

* A backend that raises mid-stream. The fault is INJECTED through the documented switch
  ``EVIT_ROS_FAULT_INJECTION`` (:mod:`evit_ros.runtime.fault_injection`); nothing else here
  is simulated. Under ``backend:=auto`` the node reports ERROR, falls back to the next
  backend of the auto order and keeps publishing; with an explicit backend it keeps trying.
* A garbage engine folder under ``backend:=auto`` (TensorRT is absent here, so the node
  must still start on onnxruntime with one log line per skipped candidate).
* Start-up refusals: corrupt, hostile, wrong-model and tampered checkpoints, a missing
  weights path, an engine_dir that is a file: a non-zero exit and one line.
* SIGTERM while a frame is being segmented: the node exits within 2 s.

ROS domains 140-179 (this file's range).
"""

import signal
import time

import cv2
import numpy as np
import pytest
import ros_harness
import torch
from conftest import require_shared
from ros_harness import counts, domain_range, NodeProcess, ros_env, Session, stamp_ns

NETWORK = (128, 256)
PARAMS = {'network_height': NETWORK[0], 'network_width': NETWORK[1],
          'diagnostics_period': 0.2, 'latency_budget_ms': 100000.0}
CHECKPOINT = 'efficientvit_seg_b0_cityscapes.pt'
domain_id = domain_range(140, 40)   # this file's range, 140-179


@pytest.fixture(autouse=True)
def own_domains(monkeypatch):
    monkeypatch.setattr(ros_harness, 'next_domain_id', domain_id)


@pytest.fixture(scope='module')
def frames():
    paths = sorted(require_shared('data', 'frames').glob('*_leftImg8bit.png'))[:3]
    return [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths]


@pytest.fixture(scope='module')
def weights_dir():
    return require_shared('weights', CHECKPOINT).parent


def torch_reference(weights_dir, frames):
    """Label maps of the offline torch Segmenter at the node's network size."""
    from evit_ros.runtime import Segmenter
    segmenter = Segmenter('b0-cityscapes', backend='torch', input_size=NETWORK,
                          weights=str(weights_dir / CHECKPOINT))
    return [segmenter.segment(frame) for frame in frames]


def send_until_failures(session, frame, failures=1, attempts=20):
    """Send ``frame`` until diagnostics count ``failures`` backend failures.

    Returns the label maps that came back before. A frame that got no answer in 10 s (lost
    before discovery finished) is sent again.
    """
    maps = []
    for _ in range(attempts):
        stamp = session.send(frame, wait=False)
        try:
            got = session.client.wait_for(
                lambda: next((m for m in session.label_maps
                              if stamp_ns(m.header) == stamp), None)
                or any(int(s['backend_failures']) >= failures for s in session.diagnostics),
                10.0, f"the label map stamped {stamp} or a backend failure")
        except AssertionError:
            continue
        if got is True:
            return maps
        maps.append(got)
    raise AssertionError('the injected fault never fired\n' + session.node.log())


def test_auto_falls_back_to_the_next_backend_and_keeps_publishing(
        frames, weights_dir, tmp_path, monkeypatch):
    # Injected: onnxruntime raises from its third frame on; torch is not affected.
    monkeypatch.setenv('EVIT_ROS_FAULT_INJECTION', 'backend_raise_after:2:onnxruntime')
    # A garbage engine folder: a truncated engine and a sidecar that matches nothing.
    engines = tmp_path / 'engines'
    engines.mkdir()
    (engines / 'b0-cityscapes_128x256_fp32.engine').write_bytes(b'\x00trunc')
    (engines / 'b0-cityscapes_128x256_fp32.engine.json').write_text('{"tensorrt": "0.0"}')
    # device cuda: auto tries (and here skips) the GPU backends first; cpu would skip them.
    session = Session(dict(PARAMS, backend='auto', device='cuda', engine_dir=str(engines)),
                      tmp_path / 'cache', weights_dir)
    try:
        first = session.status(what='the first diagnostics')
        assert (first['backend'], first['backend_failures'], first['backend_switches']) == (
            'onnxruntime', '0', '0')
        session.wait_ready()
        before = send_until_failures(session, frames[0])
        assert 1 <= len(before) <= 2
        assert all((m.height, m.width) == frames[0].shape[:2] for m in before)
        failed = session.status(lambda s: s['backend_switches'] == '1', 'the switch')
        assert failed['level'] == 2, failed
        assert failed['message'].startswith('backend failed: InjectedFault: injected fault')
        assert (failed['backend'], failed['backend_failures']) == ('torch', '1')

        reference = torch_reference(weights_dir, frames)
        for index, frame in enumerate(frames):
            msg = session.send(frame, frame_id=f'after_{index}')
            assert msg.header.frame_id == f'after_{index}'
            label_map = np.frombuffer(msg.data, np.uint8).reshape(frame.shape[:2])
            np.testing.assert_array_equal(label_map, reference[index])
        recovered = session.settled()
        # No longer ERROR; WARN for a few seconds because of the recently failed frame.
        assert recovered['level'] in (0, 1), recovered
        assert not recovered['message'].startswith('backend failed'), recovered
        assert (recovered['backend'], recovered['backend_failures'],
                recovered['backend_switches']) == ('torch', '1', '1')
        tally = counts(recovered)
        assert tally['rejected'] == 1
        assert tally['processed'] == len(before) + len(frames)
    finally:
        code, _ = session.close()
    log = session.node.log()
    assert code == 0, log
    for skipped in ('skipping tensorrt on cuda', 'skipping onnxruntime on cuda',
                    'skipping torch on cuda'):
        assert log.count(skipped) == 1, log
    assert log.count('switched to torch on cpu') == 1, log


def test_explicit_backend_keeps_trying_and_reports_error(frames, weights_dir, tmp_path,
                                                         monkeypatch):
    # Injected: every backend raises from its first frame on.
    monkeypatch.setenv('EVIT_ROS_FAULT_INJECTION', 'backend_raise_after:0')
    session = Session(dict(PARAMS, backend='torch'), tmp_path / 'cache', weights_dir)
    try:
        session.wait_ready()
        for failures in (1, 2, 3):
            assert send_until_failures(session, frames[0], failures) == []
        status = session.settled()
        assert status['level'] == 2, status
        assert status['message'].startswith('backend failed: InjectedFault')
        assert (status['backend'], status['backend_switches']) == ('torch', '0')
        failures = int(status['backend_failures'])
        assert failures >= 3
        assert counts(status)['rejected'] == failures
        assert counts(status)['processed'] == 0
        assert not session.label_maps
        assert session.node.proc.poll() is None
    finally:
        code, _ = session.close()
    assert code == 0, session.node.log()


def test_sigterm_while_segmenting_exits_within_two_seconds(frames, weights_dir, tmp_path):
    # The default 1024x2048 network takes seconds per frame on this CPU: a frame is in
    # flight when the signal comes.
    params = {'backend': 'torch', 'diagnostics_period': 0.1, 'cpu_threads': 1}
    session = Session(params, tmp_path / 'cache', weights_dir)
    try:
        session.wait_ready()
        session.status(what='the first diagnostics')
        busy = None
        for _ in range(10):
            session.send(frames[0], wait=False)
            try:
                busy = session.client.wait_for(
                    lambda: next((s for s in session.diagnostics
                                  if s['frames_in_flight'] != '0'), None), 10.0, 'busy')
                break
            except AssertionError:
                continue
        assert busy is not None, session.node.log()
        assert busy['frames_processed'] == '0'    # the first frame is still being segmented
        time.sleep(0.3)
    finally:
        session.client.close()
        code, seconds = session.node.stop(signal.SIGTERM)
    print(f'SIGTERM mid-frame: exited with {code} after {seconds:.2f} s')
    assert code == 0, session.node.log()
    assert seconds < 2.0, (seconds, session.node.log())


class _Hostile:
    """Unpickling this would create ``marker``: a checkpoint that runs code when loaded."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, 'w'))


def _corrupt(folder, official):
    path = folder / 'corrupt.pt'
    data = official.read_bytes()
    path.write_bytes(data[:len(data) // 3])           # a truncated download
    return path


def _hostile(folder, official):
    path = folder / 'hostile.pt'
    torch.save({'state_dict': {'x': torch.zeros(1)}, 'payload': _Hostile(folder / 'pwned')},
               path)
    return path


def _wrong_model(folder, official):
    from evit_ros.model import create_model
    path = folder / 'b1.pt'
    torch.save({'state_dict': create_model('b1-cityscapes').state_dict()}, path)
    return path


def _tampered_dir(folder, official):
    tampered = folder / 'weights'
    tampered.mkdir()
    data = bytearray(official.read_bytes())
    data[len(data) // 2] ^= 1
    (tampered / CHECKPOINT).write_bytes(bytes(data))
    return tampered


@pytest.mark.parametrize('case, expected', [
    ('corrupt', ['corrupt.pt', 'checkpoint']),
    ('hostile', ['hostile.pt']),
    ('wrong_model', ['b1.pt']),
    ('tampered', ['fails its sha256 check', 'expected 923d6fdd5e93640cc0c2f3f213764f34e80b477c'
                  'd98a6b294d870ea6df5acc50, got ']),
    ('missing', ["weights file '/nonexistent/b0.pt' does not exist"]),
    ('engine_dir_file', ['is a file, not a folder']),
])
def test_startup_refuses_bad_checkpoints_and_paths(case, expected, weights_dir, tmp_path):
    official = weights_dir / CHECKPOINT
    params = {'backend': 'torch'}
    extra = {'EVIT_ROS_WEIGHTS_DIR': str(weights_dir)}
    if case == 'tampered':
        extra['EVIT_ROS_WEIGHTS_DIR'] = str(_tampered_dir(tmp_path, official))
    elif case == 'missing':
        params['weights'] = '/nonexistent/b0.pt'
    elif case == 'engine_dir_file':
        (tmp_path / 'engines').write_text('not a folder')
        params['engine_dir'] = str(tmp_path / 'engines')
    else:
        builder = {'corrupt': _corrupt, 'hostile': _hostile, 'wrong_model': _wrong_model}
        params['weights'] = str(builder[case](tmp_path, official))
    env = ros_env(domain_id(), EVIT_ROS_CACHE=str(tmp_path / 'cache'), **extra)
    node = NodeProcess(params, env)
    code = node.proc.wait(120)
    lines = [line for line in node.log().splitlines() if line.strip()]
    assert code != 0
    assert len(lines) == 1, lines
    assert lines[0].startswith('segmentation_node: error: '), lines
    for text in expected:
        assert text in lines[0], lines
    assert not (tmp_path / 'pwned').exists()     # nothing was unpickled


def test_fault_injection_switch_parses_and_wraps_only_the_named_backend(monkeypatch):
    from evit_ros.runtime import Segmenter
    from evit_ros.runtime.fault_injection import FaultyBackend, InjectedFault, parse
    assert parse('') is None
    assert parse('backend_raise_after:3') == (3, '')
    assert parse('backend_raise_after:0:onnxruntime') == (0, 'onnxruntime')
    for bad in ('raise', 'backend_raise_after', 'backend_raise_after:-1', 'backend_raise_after:x',
                'backend_raise_after:1:torch:cpu'):
        with pytest.raises(ValueError, match='EVIT_ROS_FAULT_INJECTION'):
            parse(bad)
    image = np.zeros((32, 64, 3), np.uint8)
    monkeypatch.setenv('EVIT_ROS_FAULT_INJECTION', 'backend_raise_after:1:onnxruntime')
    torch.manual_seed(0)   # random weights, the same for both Segmenters
    plain = Segmenter('b0-cityscapes', backend='torch', weights=None, input_size=(32, 64))
    assert not isinstance(plain.backend, FaultyBackend)
    monkeypatch.setenv('EVIT_ROS_FAULT_INJECTION', 'backend_raise_after:1')
    torch.manual_seed(0)
    faulty = Segmenter('b0-cityscapes', backend='torch', weights=None, input_size=(32, 64))
    assert isinstance(faulty.backend, FaultyBackend) and faulty.backend_name == 'torch'
    np.testing.assert_array_equal(faulty.segment(image), plain.segment(image))
    with pytest.raises(InjectedFault, match='torch frame 2'):
        faulty.segment(image)
    monkeypatch.setenv('EVIT_ROS_FAULT_INJECTION', 'backend_raise_after:x')
    with pytest.raises(ValueError, match='not understood'):
        Segmenter('b0-cityscapes', backend='torch', weights=None, input_size=(32, 64))
