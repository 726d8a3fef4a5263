"""Run the segmentation node in its own process and talk to it over real DDS from the test.

``NodeProcess`` starts ``segmentation_node`` (console script) with ROS arguments;
``RosClient`` is an rclpy node in the test process, spun in a background thread, that
publishes frames and collects what comes back. Each user picks a ROS domain from
:func:`next_domain_id` (20-59, this suite's range) and discovery stays on localhost.

Run as a script it is a probe used by the Fast DDS profile test::

    python ros_harness.py publish HEIGHT WIDTH COUNT   # rgb8 frames, best effort
    python ros_harness.py receive                      # until SIGTERM; prints 'received N'
"""

import itertools
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional

REPO = Path(__file__).resolve().parent.parent
TOPIC = '/segmentation_node/'
TIMEOUT = 90.0   # seconds for one frame on a loaded 2-core machine
PROFILE = REPO / 'config' / 'fastdds_large_images.xml'
NODE = '/segmentation_node'


def domain_range(first: int, size: int) -> Callable[[], int]:
    """Return a function that gives a new ROS domain id from ``first`` .. ``first + size - 1``
    per call. It starts at an offset from the process id, so that two test processes running
    at once (developers' targeted runs) rarely share a domain and hear each other."""
    counter = itertools.count(os.getpid() * 7)

    def next_id() -> int:
        return first + next(counter) % size
    return next_id


#: This suite's range, 20-59.
next_domain_id = domain_range(20, 40)
#: The reliability tests' range, 100-139.
reliability_domain_id = domain_range(100, 40)


def proc_stats(pid: int) -> Dict[str, int]:
    """Return ``rss_kb``, ``hwm_kb`` (VmRSS, VmHWM), open ``fds`` and ``threads`` of ``pid``."""
    stats = {}
    with open(f'/proc/{pid}/status') as status:
        for line in status:
            key, _, value = line.partition(':')
            if key in ('VmRSS', 'VmHWM'):
                stats[key.lower()[2:] + '_kb'] = int(value.split()[0])
    stats['fds'] = len(os.listdir(f'/proc/{pid}/fd'))
    stats['threads'] = len(os.listdir(f'/proc/{pid}/task'))
    return stats


def ros_env(domain_id: int, profile: bool = True, **extra: str) -> Dict[str, str]:
    """Return an environment for a ROS process on ``domain_id``, localhost only."""
    env = dict(os.environ)
    env.pop('FASTRTPS_DEFAULT_PROFILES_FILE', None)
    env.pop('FASTDDS_DEFAULT_PROFILES_FILE', None)
    env.update(ROS_DOMAIN_ID=str(domain_id), ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST')
    if profile:
        env['FASTDDS_DEFAULT_PROFILES_FILE'] = str(PROFILE)
    env.update(extra)
    return env


def node_command(entry: str = 'console') -> List[str]:
    """Return the command that starts the node: ``console`` script, ``module`` or ``cli``."""
    bindir = Path(sys.executable).parent
    if entry == 'module':
        return [sys.executable, '-m', 'evit_ros.ros.segmentation_node']
    if entry.split()[0] == 'cli':                 # 'cli --preset b0-cityscapes' too
        return [str(bindir / 'evit-ros'), 'node'] + entry.split()[1:]
    script = bindir / 'segmentation_node'
    if script.exists():
        return [str(script)]
    return [sys.executable, '-m', 'evit_ros.ros.segmentation_node']


def ros_args(params: Dict[str, Any], remaps: Iterable[str] = ()) -> List[str]:
    """Return ``--ros-args -p name:=value ... -r from:=to ...``."""
    args = ['--ros-args']
    for name, value in params.items():
        args += ['-p', f'{name}:={value}']
    for remap in remaps:
        args += ['-r', remap]
    return args


class NodeProcess:
    """The node in a child process; its stdout and stderr go to a temporary file."""

    def __init__(self, params: Dict[str, Any], env: Dict[str, str], remaps: Iterable[str] = (),
                 entry: str = 'console', command: Optional[List[str]] = None):
        self._log = tempfile.TemporaryFile(mode='w+')
        self.proc = subprocess.Popen((command or node_command(entry)) + ros_args(params, remaps),
                                     env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=REPO)

    def rss_mb(self) -> float:
        """Return the node's resident memory (VmRSS) in MiB."""
        return proc_stats(self.proc.pid)['rss_kb'] / 1024.0

    def log(self) -> str:
        """Return everything the node printed so far."""
        self._log.flush()
        self._log.seek(0)
        return self._log.read()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0):
        """Send ``sig`` and return ``(exit code, seconds until exit)``."""
        if self.proc.poll() is not None:
            return self.proc.returncode, 0.0
        start = time.monotonic()
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        return code, time.monotonic() - start


class RosClient:
    """An rclpy node in the test process on its own context and domain."""

    def __init__(self, domain_id: int, name: str = 'evit_ros_test_client'):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        os.environ.setdefault('FASTDDS_DEFAULT_PROFILES_FILE', str(PROFILE))
        os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.cond = threading.Condition()
        self.messages: Dict[str, List[Any]] = {}
        self._subscriptions: Dict[str, Any] = {}
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # noqa: B902 - the context is shutting down
                if self.context.ok():
                    raise
                return

    def publisher(self, msg_type, topic: str, qos=None):
        """Create a publisher (default: sensor-data QoS, as a camera driver)."""
        from rclpy.qos import qos_profile_sensor_data
        return self.node.create_publisher(msg_type, topic, qos or qos_profile_sensor_data)

    def subscribe(self, msg_type, topic: str, qos=None) -> List[Any]:
        """Collect messages on ``topic`` (default reliable, depth 50); return the live list."""
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        qos = qos or QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        received = self.messages.setdefault(topic, [])

        def on_message(msg):
            with self.cond:
                received.append(msg)
                self.cond.notify_all()
        self._subscriptions[topic] = self.node.create_subscription(
            msg_type, topic, on_message, qos)
        return received

    def unsubscribe(self, topic: str) -> None:
        """Destroy the subscription on ``topic``."""
        self.node.destroy_subscription(self._subscriptions.pop(topic))

    def wait_for(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        """Wait until ``predicate()`` is truthy and return it; fail naming ``what``."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                result = predicate()
                if result:
                    return result
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f'timed out after {timeout:.0f} s waiting for {what}')
                self.cond.wait(min(left, 0.1))

    def watch_diagnostics(self) -> List[Dict[str, str]]:
        """Subscribe to /diagnostics; return the live list of the node's statuses as dicts."""
        from diagnostic_msgs.msg import DiagnosticArray
        statuses: List[Dict[str, str]] = []
        self.messages['diagnostics'] = statuses

        def on_array(array):
            with self.cond:
                for status in array.status:
                    if status.name.endswith(': segmentation'):
                        entry = {kv.key: kv.value for kv in status.values}
                        entry.update(level=ord(status.level), message=status.message,
                                     name=status.name, hardware_id=status.hardware_id)
                        statuses.append(entry)
                self.cond.notify_all()
        self._subscriptions['/diagnostics'] = self.node.create_subscription(
            DiagnosticArray, '/diagnostics', on_array, 10)
        return statuses

    def set_parameters(self, values: Dict[str, Any], node: str = NODE, timeout: float = 10.0):
        """Set parameters on a remote node; return the ``SetParametersResult`` list."""
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter
        request = SetParameters.Request(parameters=[
            Parameter(name, value=value).to_parameter_msg() for name, value in values.items()])
        return self._call(SetParameters, f'{node}/set_parameters', request, timeout).results

    def get_parameters(self, names: List[str], node: str = NODE, timeout: float = 10.0):
        """Return the current values of ``names`` on a remote node."""
        from rcl_interfaces.srv import GetParameters
        from rclpy.parameter import parameter_value_to_python
        response = self._call(GetParameters, f'{node}/get_parameters',
                              GetParameters.Request(names=names), timeout)
        return [parameter_value_to_python(value) for value in response.values]

    def change_state(self, transition: str, node: str = NODE, timeout: float = 120.0) -> bool:
        """Ask a lifecycle node for ``transition`` (configure, activate...); return success."""
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState
        request = ChangeState.Request()
        request.transition.id = getattr(Transition, 'TRANSITION_' + transition.upper())
        return self._call(ChangeState, f'{node}/change_state', request, timeout).success

    def get_state(self, node: str = NODE, timeout: float = 10.0) -> str:
        """Return a lifecycle node's current state label (``unconfigured``, ``active``...)."""
        from lifecycle_msgs.srv import GetState
        return self._call(GetState, f'{node}/get_state', GetState.Request(),
                          timeout).current_state.label

    def _call(self, srv_type, name: str, request, timeout: float):
        client = self.node.create_client(srv_type, name)
        try:
            if not client.wait_for_service(timeout_sec=timeout):
                raise AssertionError(f'service {name} did not appear')
            future = client.call_async(request)
            done = threading.Event()
            future.add_done_callback(lambda _: done.set())
            if not done.wait(timeout):
                raise AssertionError(f'service {name} did not answer in {timeout} s')
            return future.result()
        finally:
            self.node.destroy_client(client)

    def close(self) -> None:
        """Shut the context down and stop spinning."""
        self.context.try_shutdown()
        self._thread.join(2.0)


class Session:
    """A running node plus a client with publishers and subscriptions on its topics."""

    def __init__(self, params, tmp, weights_dir, remaps=(), image_type=None, prefix=TOPIC,
                 image_topic=None, domain=None, image_qos=None, command=None):
        from sensor_msgs.msg import Image
        self.domain = next_domain_id() if domain is None else domain
        env = ros_env(self.domain, EVIT_ROS_WEIGHTS_DIR=str(weights_dir),
                      EVIT_ROS_CACHE=str(tmp))
        self.node = NodeProcess(params, env, remaps, command=command)
        self.client = RosClient(self.domain)
        self.prefix = prefix
        self.diagnostics = self.client.watch_diagnostics()
        self.label_maps = self.client.subscribe(Image, prefix + 'label_map')
        self.image_pub = self.client.publisher(image_type or Image,
                                               image_topic or prefix + 'image', image_qos)
        self.stamp = time.time_ns()

    def next_stamp(self) -> int:
        """Return a new, increasing stamp close to the wall clock (nanoseconds)."""
        self.stamp = max(self.stamp + 1, time.time_ns())
        return self.stamp

    def wait_ready(self):
        """Wait until the node subscribes to the images (it has loaded its model)."""
        self.client.wait_for(lambda: self.image_pub.get_subscription_count() > 0
                             or self.node.proc.poll() is not None, TIMEOUT, 'the node')
        assert self.node.proc.poll() is None, self.node.log()

    def label_map(self, stamp, timeout=TIMEOUT):
        """Wait for the label map carrying ``stamp`` and return it."""
        return self.client.wait_for(
            lambda: next((m for m in self.label_maps if stamp_ns(m.header) == stamp), None),
            timeout, f'the label map stamped {stamp}')

    def send(self, rgb, frame_id='camera', encoding='rgb8', wait=True):
        """Publish a frame; return its label map (``wait``) or its stamp."""
        stamp = self.next_stamp()
        self.image_pub.publish(image_msg(rgb, stamp, frame_id, encoding))
        return self.label_map(stamp) if wait else stamp

    def warm_up(self, rgb):
        """Send a frame until one label map comes back (everything matched and running)."""
        for _ in range(10):
            stamp = self.send(rgb, wait=False)
            try:
                return self.label_map(stamp, timeout=TIMEOUT / 3)
            except AssertionError:
                continue
        raise AssertionError('no label map came back\n' + self.node.log())

    def status(self, predicate=lambda s: True, what='a diagnostics status'):
        """Return the first status from now on that satisfies ``predicate``."""
        start = len(self.diagnostics)
        return self.client.wait_for(
            lambda: next((s for s in self.diagnostics[start:] if predicate(s)), None),
            TIMEOUT, what)

    def settled(self):
        """Return a status with no frame in flight, after everything sent so far."""
        return self.status(lambda s: s['frames_in_flight'] == '0', 'no frame in flight')

    def close(self):
        """Stop the client and the node; return the node's ``(exit code, seconds)``."""
        self.client.close()
        return self.node.stop()


def counts(status):
    """Return the frame counters of a diagnostics status as integers."""
    return {k: int(status['frames_' + k])
            for k in ('received', 'processed', 'dropped', 'rejected', 'in_flight')}


def image_msg(rgb, stamp_ns: int, frame_id: str, encoding: str = 'rgb8'):
    """Return a ``sensor_msgs/Image`` of an ``HxWx3`` RGB array in ``rgb8`` or ``bgr8``."""
    import numpy as np
    from sensor_msgs.msg import Image
    pixels = rgb if encoding == 'rgb8' else np.ascontiguousarray(rgb[:, :, ::-1])
    msg = Image(height=pixels.shape[0], width=pixels.shape[1], encoding=encoding,
                step=pixels.shape[1] * 3)
    msg.header.frame_id = frame_id
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 10**9)
    msg.data = pixels.tobytes()
    return msg


def stamp_ns(header) -> int:
    """Return a header's stamp in nanoseconds."""
    return header.stamp.sec * 10**9 + header.stamp.nanosec


def _probe(argv: List[str]) -> None:
    import numpy as np
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from rclpy.signals import SignalHandlerOptions
    from sensor_msgs.msg import Image
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node('evit_ros_probe')
    if argv[0] == 'publish':
        height, width, count = (int(a) for a in argv[1:4])
        publisher = node.create_publisher(Image, 'probe', qos_profile_sensor_data)
        msg = image_msg(np.full((height, width, 3), 7, np.uint8), 1, 'probe')
        deadline = time.monotonic() + 20
        while publisher.get_subscription_count() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        for _ in range(count):
            publisher.publish(msg)
            time.sleep(0.05)
        time.sleep(0.5)
    else:
        # Receive until SIGTERM, then report the count.
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        received = []
        node.create_subscription(Image, 'probe', received.append, qos_profile_sensor_data)
        print('ready', flush=True)
        while not stop.is_set():
            rclpy.spin_once(node, timeout_sec=0.05)
        print('received', len(received), flush=True)
    node.destroy_node()
    rclpy.shutdown()


if __name__ == '__main__':
    _probe(sys.argv[1:])
