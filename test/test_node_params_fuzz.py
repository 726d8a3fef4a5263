"""Wrong parameter values for the running node, at runtime and at start-up.

At runtime the test process is a real rclpy client of the node's ``set_parameters`` service;
hypothesis draws parameter names and values of wrong types or out of range. Each is refused
with a reason, ``get_parameters`` returns the old values afterwards and the node still
segments. At start-up a wrong value ends the node with a non-zero status and one line.
"""

import math

import numpy as np
import pytest
from conftest import require_shared
from hypothesis import assume, HealthCheck, given, settings, strategies as st
from ros_harness import (NodeProcess, reliability_domain_id, ros_env, Session)

from evit_ros.ros.parameters import PARAMETERS

EXAMPLES = 200
CHUNK = 25             # parameters per SetParameters request
PARAMS = {'backend': 'torch', 'network_height': 64, 'network_width': 128, 'cpu_threads': 1,
          'diagnostics_period': 0.2, 'latency_budget_ms': 100000.0}
NAMES = [spec.name for spec in PARAMETERS]
# Runtime parameters and what they accept, written here independently of the node's table.
RUNTIME = {'output_resolution': ('input', 'network'), 'overlay_alpha': (0.0, 1.0),
           'latency_budget_ms': (0.0, 600000.0), 'diagnostics_period': (0.05, 60.0)}
PYTHON_TYPE = {'string': str, 'integer': int, 'double': float, 'boolean': bool,
               'string array': list}


def _refused(name, value, current):
    """Whether setting ``name`` to ``value`` must be refused (the test's own rules)."""
    if name not in current:
        return True                                  # undeclared
    if type(value) is not type(current[name]):       # bool is not int, int is not float
        return True
    if name not in RUNTIME:
        return value != current[name]                # start-up only: any change refused
    allowed = RUNTIME[name]
    if isinstance(value, str):
        return value not in allowed
    return math.isnan(value) or not allowed[0] <= value <= allowed[1]


values = st.one_of(
    st.booleans(), st.integers(-2**40, 2**40), st.integers(-5, 300),
    st.floats(allow_nan=True, allow_infinity=True), st.floats(-2.0, 3.0),
    st.text(max_size=10), st.sampled_from(['network', 'input', 'cuda', 'torch', 'abc', '']),
    st.lists(st.integers(-5, 5), min_size=1, max_size=3),
    st.lists(st.floats(-1, 1), min_size=1, max_size=3),
    st.lists(st.text(max_size=3), min_size=1, max_size=3),
    st.lists(st.booleans(), min_size=1, max_size=3),
    st.lists(st.binary(min_size=1, max_size=1), min_size=1, max_size=4))   # byte array
names = st.one_of(st.sampled_from(NAMES), st.sampled_from(sorted(RUNTIME)),
                  st.just('no_such_parameter'))


@pytest.fixture(scope='module')
def weights_dir():
    return require_shared('weights', 'efficientvit_seg_b0_cityscapes.pt').parent


def test_wrong_values_at_runtime_are_refused_and_change_nothing(tmp_path, weights_dir):
    session = Session(PARAMS, tmp_path, weights_dir, domain=reliability_domain_id())
    try:
        session.wait_ready()
        frame = np.random.RandomState(0).randint(0, 256, (24, 40, 3)).astype(np.uint8)
        session.warm_up(frame)
        before = dict(zip(NAMES, session.client.get_parameters(NAMES)))
        assert before['network_height'] == 64 and before['overlay_alpha'] == 0.5
        tried = []

        @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(names, values)
        def draw(name, value):
            assume(_refused(name, value, before))
            tried.append((name, value))

        draw()
        assert len(tried) >= EXAMPLES // 2, len(tried)
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter
        for start in range(0, len(tried), CHUNK):
            chunk = tried[start:start + CHUNK]
            request = SetParameters.Request(parameters=[
                Parameter(name, value=value).to_parameter_msg() for name, value in chunk])
            results = session.client._call(SetParameters, '/segmentation_node/set_parameters',
                                           request, 10.0).results
            assert len(results) == len(chunk)
            for (name, value), result in zip(chunk, results):
                assert not result.successful, (name, value)
                assert result.reason.strip(), (name, value)
                assert '\n' not in result.reason, (name, value, result.reason)
        after = dict(zip(NAMES, session.client.get_parameters(NAMES)))
        assert after == before
        msg = session.send(frame)
        assert (msg.encoding, msg.height, msg.width) == ('mono8', 24, 40)
        assert session.node.proc.poll() is None
        kinds = {type(value).__name__ for _, value in tried}
        print(f'params fuzz: {len(tried)} refused values over '
              f'{len({n for n, _ in tried})} names, types {sorted(kinds)}')
    finally:
        session.close()


@pytest.mark.parametrize('params, fix', [
    ({'network_height': 'abc'}, 'network_height must be an integer'),
    ({'overlay_alpha': 2.0}, 'overlay_alpha must be a number from 0 to 1, got 2'),
    ({'qos_depth': 0}, 'qos_depth must be an integer from 1 to 100, got 0'),
])
def test_wrong_values_at_startup_exit_with_one_line(params, fix, tmp_path, weights_dir):
    env = ros_env(reliability_domain_id(), EVIT_ROS_CACHE=str(tmp_path),
                  EVIT_ROS_WEIGHTS_DIR=str(weights_dir))
    node = NodeProcess(params, env)
    code = node.proc.wait(120)
    lines = [line for line in node.log().splitlines() if line.strip()]
    assert code != 0
    assert len(lines) == 1, lines
    assert lines[0].startswith('segmentation_node: error: invalid parameter')
    assert fix in lines[0], lines[0]
