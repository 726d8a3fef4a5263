"""The node as a managed lifecycle node, driven from this process through its real
``~/change_state`` and ``~/get_state`` services over DDS."""

import os
import time

import numpy as np
import pytest
from conftest import require_shared
from ros_harness import Session, TIMEOUT

PARAMS = {'backend': 'torch', 'network_height': 512, 'network_width': 1024,
          'autostart': False, 'diagnostics_period': 0.2, 'latency_budget_ms': 100000.0}
WEIGHTS = 'efficientvit_seg_b0_cityscapes.pt'


def wait_while_running(node, ready, timeout=TIMEOUT):
    """Poll ``ready()`` until it is true; fail with the node's log if it exits or times out."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert node.proc.poll() is None and time.monotonic() < deadline, node.log()
        time.sleep(0.2)


def test_transitions_outputs_memory_and_a_failed_configure_retried(tmp_path):
    """Unconfigured -> (configure fails: no weights) -> configure -> activate -> deactivate
    -> cleanup -> shutdown, checking outputs and memory at each step."""
    official = require_shared('weights', WEIGHTS)
    weights_dir = tmp_path / 'weights'
    weights_dir.mkdir()
    session = Session(PARAMS, tmp_path, weights_dir)
    client = session.client
    frame = np.random.default_rng(0).integers(0, 255, (64, 128, 3), dtype=np.uint8)
    try:
        assert client.get_state(timeout=TIMEOUT) == 'unconfigured'
        # A missing checkpoint: the transition fails with the reason, the node stays up.
        assert client.change_state('configure') is False
        assert client.get_state() == 'unconfigured'
        failed = session.status(lambda s: s['message'].startswith('configure failed'),
                                'the failure on /diagnostics')
        assert failed['level'] == 2 and 'weights fetch b0-cityscapes' in failed['message']
        assert 'configure failed: cannot load b0-cityscapes' in session.node.log()
        assert session.node.proc.poll() is None

        # The user fetches the weights; the next try succeeds.
        os.symlink(official, weights_dir / WEIGHTS)
        assert client.change_state('configure') is True
        assert client.get_state() == 'inactive'
        # Inactive: loaded but not subscribed, so nothing comes out.
        stamp = session.send(frame, wait=False)
        time.sleep(1.0)
        assert session.image_pub.get_subscription_count() == 0
        assert not session.label_maps

        assert client.change_state('activate') is True
        assert client.get_state() == 'active'
        session.wait_ready()
        first = session.warm_up(frame)
        assert (first.height, first.width) == (64, 128)
        assert all(m.header.stamp != stamp for m in session.label_maps)

        assert client.change_state('deactivate') is True
        assert client.get_state() == 'inactive'
        client.wait_for(lambda: session.image_pub.get_subscription_count() == 0, TIMEOUT,
                        'the node to unsubscribe')
        count = len(session.label_maps)
        session.send(frame, wait=False)
        time.sleep(1.0)
        assert len(session.label_maps) == count

        assert client.change_state('cleanup') is True
        assert client.get_state() == 'unconfigured'
        # Configured again and cleaned up: the model and its 512x1024 warm-up buffers go back
        # to the system. (Measured on this second cycle: after frames have flowed, what glibc
        # can hand back depends on where DDS's own allocations landed meanwhile.)
        assert client.change_state('configure') is True
        loaded_mb = session.node.rss_mb()
        assert client.change_state('cleanup') is True
        assert client.get_state() == 'unconfigured'
        freed_mb = loaded_mb - session.node.rss_mb()
        assert freed_mb > 10.0, f'cleanup freed only {freed_mb:.1f} MiB'

        assert client.change_state('unconfigured_shutdown') is True
        assert client.get_state() == 'finalized'
    finally:
        session.close()


@pytest.mark.parametrize('autostart', [True])
def test_autostart_configure_failure_exits_with_one_line(autostart, tmp_path):
    from ros_harness import next_domain_id, NodeProcess, ros_env
    env = ros_env(next_domain_id(), EVIT_ROS_CACHE=str(tmp_path),
                  EVIT_ROS_WEIGHTS_DIR=str(tmp_path))
    node = NodeProcess({'backend': 'torch', 'autostart': autostart}, env)
    code = node.proc.wait(120)
    lines = [line for line in node.log().splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1, lines
    assert lines[0].startswith('segmentation_node: error: cannot load b0-cityscapes')


@pytest.mark.parametrize('autostart, sig', [(True, 'SIGINT'), (False, 'SIGTERM')])
def test_a_stopped_node_leaves_no_shared_memory_behind(autostart, sig, official_weights):
    """Stopped by Ctrl-C (active) or SIGTERM (unconfigured), the node destroys its DDS
    participant: its shared-memory segments (64 MB each with the large-image profile) are
    gone from /dev/shm. rclpy's lifecycle node kept the participant alive, and every run
    of the node or a node-mode replay left two segments behind."""
    import signal
    from evit_ros.ros.shm import owned_segments
    from ros_harness import next_domain_id, NodeProcess, ros_env
    node = NodeProcess({'network_height': 64, 'network_width': 128, 'autostart': autostart},
                       ros_env(next_domain_id()))
    try:
        # Up: listening (active), or its participant exists (unconfigured; rclpy.init, which
        # installs the signal handlers, came before it).
        wait_while_running(node, lambda: ('listening on' in node.log()) if autostart
                           else owned_segments(node.proc.pid))
        if not autostart:
            time.sleep(3.0)  # the participant comes first, the node's constructor after it
        segments = owned_segments(node.proc.pid)   # those whose lock the node holds
        assert segments, 'the node owns no Fast DDS segment: is shared memory in use?'
        assert all(os.path.exists(path) for path in segments)
        code, _ = node.stop(getattr(signal, sig), timeout=TIMEOUT)
        assert code == 0, node.log()
        left = sorted(path for path in segments if os.path.exists(path))
        assert not left, f'left in /dev/shm after the node exited: {left}'
    finally:
        node.stop(timeout=10)


def test_autostart_waits_for_a_transition_listener(official_weights):
    """A launch file that acts on the transition to active subscribes to
    ``~/transition_event`` before the node starts, but DDS may discover that subscription
    after the model has loaded; the events are volatile, so it would never see them. With
    ``autostart_listener_timeout`` the node waits for the subscriber: here it subscribes
    only after the node has had time to load the model, and still sees every transition."""
    from lifecycle_msgs.msg import TransitionEvent
    from ros_harness import next_domain_id, NodeProcess, RosClient, ros_env
    domain = next_domain_id()
    node = NodeProcess({'network_height': 64, 'network_width': 128,
                        'autostart_listener_timeout': 60.0}, ros_env(domain))
    client = None
    try:
        waiting = 'waiting up to 60 s for a subscriber on /segmentation_node/transition_event'
        wait_while_running(node, lambda: waiting in node.log())
        time.sleep(5.0)   # the model (64x128 B0) loads in about a second
        assert 'listening on' not in node.log(), node.log()
        client = RosClient(domain)
        events = client.subscribe(TransitionEvent, '/segmentation_node/transition_event')
        client.wait_for(lambda: any(e.goal_state.label == 'active' for e in events), TIMEOUT,
                        'the transition to active')
        labels = [e.goal_state.label for e in events]
        assert labels[-3:] == ['inactive', 'activating', 'active'], labels
        assert 'listening on' in node.log()
    finally:
        if client is not None:
            client.close()
        node.stop(timeout=10)


def test_autostart_starts_anyway_when_nobody_listens(official_weights):
    from ros_harness import next_domain_id, NodeProcess, ros_env
    node = NodeProcess({'network_height': 64, 'network_width': 128,
                        'autostart_listener_timeout': 2.0}, ros_env(next_domain_id()))
    try:
        wait_while_running(node, lambda: 'listening on' in node.log())
        log = node.log()
        assert ('autostart: nothing subscribed to /segmentation_node/transition_event within '
                '2 s (autostart_listener_timeout); starting anyway') in log, log
        assert log.index('starting anyway') < log.index('listening on')
    finally:
        node.stop(timeout=10)
