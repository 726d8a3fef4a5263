#!/usr/bin/env python3
"""One node for three cameras vs three single-camera nodes, side by side in one run.

Usage::

    .venv/bin/python bench/multi_camera.py                  # 3 cameras, 512x1024, 15 Hz, 30 s
    .venv/bin/python bench/multi_camera.py --seconds 10 --workers 2 --cpu-threads 1

Three cameras (``/front``, ``/left``, ``/right``) publish rgb8 frames of the shared
street frame halved to 512x1024, best effort (as camera drivers), at ``--rate`` Hz each
from a child process of this one (so that publishing does not slow down receiving here).
First one ``segmentation_node`` with ``cameras`` set to the three topics serves them (one
model; ``--workers`` workers, default 3, with ``--cpu-threads`` each, default 1, and
``--max-batch`` frames per inference, default 1); then three ``segmentation_node``
processes serve one camera each, first with their defaults (every core each), then with
``cpu_threads: 1`` each. All run the official B0 with ``backend:=auto`` (onnxruntime on
this CPU) at a 512x1024 network size and the Fast DDS large-image profile; the nodes find
the weights as a user's node does (the evit_ros cache after ``evit-ros weights import``, or
``EVIT_ROS_WEIGHTS_DIR``). For each setup, after every camera's first label map, label maps
are counted for ``--seconds``: aggregate label maps per second, each camera's p99 pipeline
latency (label map received here minus the image stamp), and the nodes' total resident
memory (VmRSS, the highest sample). Targets, for the one node against each three-node
setup: aggregate >= theirs, total RSS <= 50 % of theirs, and the worst camera's p99 within
1.5x the best's.

Other processes share this CPU: compare only numbers from one run.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
CAMERAS = ('front', 'left', 'right')
TOPICS = {name: f'/{name}/image_raw' for name in CAMERAS}


def shared_frame(height: int, width: int) -> np.ndarray:
    """Return the shared street frame as RGB at ``height`` x ``width``."""
    root = Path(os.environ.get('EVIT_ROS_SHARED', REPO.parent / 'shared'))
    path = root / 'data' / 'frames' / 'city_2048x1024.png'
    image = cv2.imread(str(path))
    if image is None:
        sys.exit(f'multi_camera: needs {path} (set EVIT_ROS_SHARED)')
    image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def rss_mb(pid: int) -> float:
    """Return a process's VmRSS in MiB (0 once it is gone)."""
    try:
        with open(f'/proc/{pid}/status') as status:
            for line in status:
                if line.startswith('VmRSS:'):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


class Rig:
    """This process's cameras and the label maps coming back."""

    def __init__(self, domain_id: int, frame: np.ndarray):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node('multi_camera_bench', context=self.context)
        self.publishers = {name: self.node.create_publisher(Image, topic,
                                                            qos_profile_sensor_data)
                           for name, topic in TOPICS.items()}
        self.messages = {}
        for name in CAMERAS:
            msg = Image(height=frame.shape[0], width=frame.shape[1], encoding='rgb8',
                        step=frame.shape[1] * 3)
            msg.header.frame_id = name
            msg.data = frame.tobytes()
            self.messages[name] = msg
        self.lock = threading.Lock()
        self.arrivals: Dict[str, List[float]] = {name: [] for name in CAMERAS}
        self.latency_ms: Dict[str, List[float]] = {name: [] for name in CAMERAS}
        self._subscriptions = []
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._stop = threading.Event()
        self._spin = threading.Thread(target=self._spin_loop, daemon=True)
        self._spin.start()
        self._publish = threading.Thread(target=self._publish_loop, daemon=True)
        self.rate = 15.0

    def _spin_loop(self) -> None:
        while self.context.ok() and not self._stop.is_set():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # noqa: B902 - shutting down
                return

    def listen(self, topics: Dict[str, str]) -> None:
        """Collect label maps: camera name -> label map topic."""
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image
        for subscription in self._subscriptions:
            self.node.destroy_subscription(subscription)
        self._subscriptions = []
        with self.lock:
            for name in CAMERAS:
                self.arrivals[name] = []
                self.latency_ms[name] = []
        for name, topic in topics.items():
            self._subscriptions.append(self.node.create_subscription(
                Image, topic, self._on_label_map(name),
                QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)))

    def _on_label_map(self, name: str):
        def on_message(msg) -> None:
            now = time.time_ns()
            stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
            with self.lock:
                self.arrivals[name].append(time.monotonic())
                self.latency_ms[name].append((now - stamp) / 1e6)
        return on_message

    def start_cameras(self, rate: float) -> None:
        """Publish every camera at ``rate`` Hz until :meth:`close`."""
        self.rate = rate
        self._publish.start()

    def _publish_loop(self) -> None:
        period = 1.0 / self.rate
        tick = time.monotonic()
        while not self._stop.is_set():
            for name in CAMERAS:
                msg = self.messages[name]
                msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(time.time_ns(), 10**9)
                self.publishers[name].publish(msg)
            tick += period
            time.sleep(max(0.0, tick - time.monotonic()))

    def close(self) -> None:
        """Stop publishing and spinning (threads first, then the context under them)."""
        self._stop.set()
        for thread in (self._publish, self._spin):
            if thread.is_alive():
                thread.join(5.0)
        self.context.try_shutdown()


def start_nodes(setup: dict, env: Dict[str, str], height: int, width: int) -> list:
    """Start the node processes of ``setup`` (one node for the rig, or one per camera)."""
    script = Path(sys.executable).parent / 'segmentation_node'
    base = [str(script), '--ros-args', '-p', 'backend:=auto', '-p', f'network_height:={height}',
            '-p', f'network_width:={width}', '-p', 'latency_budget_ms:=100000.0']
    for name, value in setup['params'].items():
        base += ['-p', f'{name}:={value}']
    if setup['one_node']:
        cameras = '[' + ','.join(TOPICS.values()) + ']'
        commands = [base + ['-p', f'cameras:={cameras}']]
    else:
        commands = [base + ['-r', f'__node:=seg_{name}', '-r', f'~/image:={topic}']
                    for name, topic in TOPICS.items()]
    procs = []
    for command in commands:
        # Its output goes to a temporary file, shown when the node exits early.
        log = tempfile.TemporaryFile(mode='w+')
        procs.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT))
        procs[-1].log = log
    return procs


def output_of(proc) -> str:
    """Return the last lines a node started by :func:`start_nodes` printed."""
    proc.log.seek(0)
    return ''.join(proc.log.readlines()[-10:])


def label_map_topics(setup: dict) -> Dict[str, str]:
    """Return camera name -> label map topic for ``setup``."""
    if setup['one_node']:
        return {name: f'/segmentation_node/{name}/label_map' for name in CAMERAS}
    return {name: f'/seg_{name}/label_map' for name in CAMERAS}


def measure(rig: Rig, setup: dict, env, height: int, width: int, seconds: float,
            startup: float) -> dict:
    """Run one setup; return its aggregate rate, RSS and per-camera p99 latency."""
    rig.listen(label_map_topics(setup))
    procs = start_nodes(setup, env, height, width)
    try:
        deadline = time.monotonic() + startup
        while time.monotonic() < deadline:
            with rig.lock:
                if all(rig.arrivals[name] for name in CAMERAS):
                    break
            for proc in procs:
                if proc.poll() is not None:
                    sys.exit(f"multi_camera: a node of {setup['name']!r} exited:\n"
                             + output_of(proc))
            time.sleep(0.2)
        else:
            sys.exit(f"multi_camera: {setup['name']!r} gave no label map on every camera "
                     f'in {startup:.0f} s')
        time.sleep(2.0)                              # past the first, cold frames
        with rig.lock:
            marks = {name: len(rig.arrivals[name]) for name in CAMERAS}
        start = time.monotonic()
        peak = 0.0
        while time.monotonic() - start < seconds:
            peak = max(peak, sum(rss_mb(proc.pid) for proc in procs))
            time.sleep(0.5)
        elapsed = time.monotonic() - start
        with rig.lock:
            counts = {name: len(rig.arrivals[name]) - marks[name] for name in CAMERAS}
            p99 = {name: float(np.percentile(rig.latency_ms[name][marks[name]:], 99))
                   if counts[name] else float('nan') for name in CAMERAS}
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
    return {'rate': sum(counts.values()) / elapsed, 'counts': counts, 'rss_mb': peak,
            'p99_ms': p99}


def main() -> int:
    """Run both setups and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--seconds', type=float, default=30.0, help='measuring window')
    parser.add_argument('--rate', type=float, default=15.0, help='frames per second per camera')
    parser.add_argument('--size', default='512x1024', help='frame and network size HxW')
    parser.add_argument('--startup', type=float, default=300.0,
                        help='seconds allowed for the first label maps (export included)')
    parser.add_argument('--workers', type=int, default=3, help="the one node's workers")
    parser.add_argument('--cpu-threads', type=int, default=1,
                        help="the one node's cpu_threads (0: every core)")
    parser.add_argument('--max-batch', type=int, default=1, help="the one node's max_batch")
    parser.add_argument('--cameras-domain', type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    height, width = (int(v) for v in args.size.split('x'))
    from evit_ros.ros.resources import use_large_image_profile
    profile = use_large_image_profile()
    if args.cameras_domain is not None:          # the child: publish until terminated
        import signal
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        cameras = Rig(args.cameras_domain, shared_frame(height, width))
        cameras.start_cameras(args.rate)
        stop.wait()
        cameras.close()
        return 0
    domain = 60 + os.getpid() % 40
    # The nodes find the weights as a user's node does (the evit_ros cache, or
    # EVIT_ROS_WEIGHTS_DIR) and share the cached ONNX export.
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST',
               FASTDDS_DEFAULT_PROFILES_FILE=profile)
    os.environ.update(ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST')
    rig = Rig(domain, shared_frame(height, width))
    cameras = subprocess.Popen([sys.executable, __file__, '--cameras-domain', str(domain),
                                '--rate', str(args.rate), '--size', args.size], env=env)
    one = {'name': f'one node: {args.workers} workers x {args.cpu_threads or "all"} threads, '
                   f'max_batch {args.max_batch}', 'one_node': True,
           'params': {'workers': args.workers, 'cpu_threads': args.cpu_threads,
                      'max_batch': args.max_batch}}
    setups = [one,
              {'name': 'three nodes (defaults: every core each)', 'one_node': False,
               'params': {}},
              {'name': 'three nodes, 1 thread each', 'one_node': False,
               'params': {'cpu_threads': 1}}]
    results = {}
    try:
        for setup in setups:
            results[setup['name']] = measure(rig, setup, env, height, width, args.seconds,
                                             args.startup)
    finally:
        cameras.terminate()
        cameras.wait(15)
        rig.close()
    print(f'3 cameras, {height}x{width} rgb8 at {args.rate:g} Hz each, B0 backend auto, '
          f'{args.seconds:g} s each, {os.cpu_count()} CPUs')
    print('| setup | label maps/s (all cameras) | per camera | total RSS MiB | '
          'p99 pipeline ms per camera | worst/best p99 |')
    print('|---|---|---|---|---|---|')
    for setup, result in results.items():
        p99 = result['p99_ms']
        spread = max(p99.values()) / min(p99.values())
        print(f"| {setup} | {result['rate']:.2f} | "
              + ' / '.join(str(result['counts'][n]) for n in CAMERAS)
              + f" | {result['rss_mb']:.0f} | "
              + ' / '.join(f'{p99[n]:.0f}' for n in CAMERAS) + f' | {spread:.2f} |')
    ours = results[one['name']]
    for setup in setups[1:]:
        three = results[setup['name']]
        print(f"vs {setup['name']}: aggregate ratio "
              f"{ours['rate'] / max(three['rate'], 1e-9):.2f} (target >= 1), RSS ratio "
              f"{ours['rss_mb'] / max(three['rss_mb'], 1e-9):.2f} (target <= 0.5)")
    spread = max(ours['p99_ms'].values()) / min(ours['p99_ms'].values())
    print(f'one-node p99 spread {spread:.2f} (target <= 1.5)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
