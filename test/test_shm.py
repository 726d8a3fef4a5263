"""Fast DDS shared-memory segments: which a process owns, and removing abandoned ones.

A node killed with SIGKILL cannot remove its 64 MB segment; a node-mode replay that has to
kill its node (stopped by Ctrl-C, the node not out within the grace time) removes it.
"""

import fcntl
import os
import signal
import time

from conftest import official_checkpoint
from evit_ros.ros.shm import owned_segments, remove_abandoned


def _segment(folder, name):
    (folder / name).write_bytes(b'\0' * 16)
    (folder / f'{name}_el').write_bytes(b'')
    return folder / name


def test_owned_and_abandoned_segments(tmp_path):
    live = _segment(tmp_path, 'fastdds_00aa')
    dead = _segment(tmp_path, 'fastdds_00bb')
    port = _segment(tmp_path, 'fastdds_port7411')
    held = []
    for path in (live, port):
        fd = os.open(f'{path}_el', os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.append(fd)
    try:
        # This process holds the live segment's lock (and a port's, which is not a segment).
        assert owned_segments(os.getpid(), tmp_path) == [live]
        assert owned_segments(os.getpid() + 100000, tmp_path) == []
        # Only the segment nobody holds goes; a missing one is no error.
        assert remove_abandoned([live, dead, tmp_path / 'fastdds_gone']) == [dead]
        assert sorted(p.name for p in tmp_path.iterdir()) == [
            'fastdds_00aa', 'fastdds_00aa_el', 'fastdds_port7411', 'fastdds_port7411_el']
    finally:
        for fd in held:
            os.close(fd)
    assert remove_abandoned([live]) == [live] and not live.exists()


def test_a_killed_node_leaves_no_segment(tmp_path, monkeypatch):
    """The node is frozen (SIGSTOP), so Ctrl-C cannot stop it: the quick close kills it
    after the grace time and removes the segments it owned."""
    from ros_harness import next_domain_id
    from evit_ros.eval.node_session import NodeSession, QUICK_GRACE_S
    monkeypatch.setenv('ROS_DOMAIN_ID', str(next_domain_id()))
    monkeypatch.setenv('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    params = {'weights': str(official_checkpoint()), 'network_height': 64,
              'network_width': 128}
    session = NodeSession('/shm_test/image', False, params, tmp_path / 'node.log')
    try:
        session.wait_ready(300)
        pid = session._proc.pid
        owned = owned_segments(pid)
        assert owned and all(path.exists() for path in owned)
        os.kill(pid, signal.SIGSTOP)
        start = time.monotonic()
        session.close(quick=True)
        took = time.monotonic() - start
    finally:
        session.close()
    assert session.returncode == -signal.SIGKILL
    assert took < QUICK_GRACE_S + 2.0, f'close took {took:.2f} s'
    assert [path for path in owned if path.exists()] == []
