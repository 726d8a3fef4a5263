"""Running a fleet's bags on Dask distributed: a local cluster by default, or an existing one.

Bags are the unit of work: one task per bag, :func:`evaluate_on_worker`, run by a worker
that keeps its model between bags (a process-wide :class:`~evit_ros.eval.fleet.SegmenterCache`,
so each worker process builds it once per setting). Results come back as bags finish
(``as_completed``) and the caller records each one then. Workers report frames done as
Dask events (topic ``evit-ros-evaluate-<run>``), which drive the caller's progress bar.

The local cluster runs worker processes bound to 127.0.0.1 with no dashboards, one Dask
thread each (a worker segments one bag at a time) and ``cores // workers`` inference
threads, so workers x threads never exceed the cores. Dask itself sends nothing anywhere
else: it has no usage reporting; the scheduler, workers and client talk over the given
address only.

Every worker must read the bags and the checkpoint at the paths the client gives (a shared
file system, or the same files copied to each machine); see the README's "Fleet
evaluation" section.
"""

import contextlib
import os
import signal
import threading
import time
import uuid
from typing import Callable, Dict, Iterator, List, Optional

from evit_ros.eval.fleet import (BagResult, evaluate_bag, failed, FleetError, FleetSettings,
                                 ModelError, SegmenterCache)

#: Seconds to wait for an existing scheduler to answer.
CONNECT_TIMEOUT_S = 20
#: Seconds between a worker's progress events.
EVENT_INTERVAL_S = 0.5

# One per worker process: the model survives from one bag to the next.
_CACHE = SegmenterCache()


def available_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def evaluate_on_worker(path: str, settings: FleetSettings, threads_by_host: Dict[str, int],
                       topic: str) -> BagResult:
    """Evaluate one bag on the Dask worker running this task (see the module doc).

    :param threads_by_host: Dask threads on each worker host; with ``settings.threads``
        0 the host's cores are shared among them for inference.
    :param topic: event topic for progress (``{'frames': n}`` messages).
    :raises ModelError: when this worker cannot build the model.
    """
    from distributed import get_worker
    worker = get_worker()
    threads = settings.threads
    if not threads:
        host = worker.address.rsplit(':', 1)[0].split('://')[-1]
        sharing = threads_by_host.get(host) or worker.state.nthreads
        threads = max(1, available_cores() // max(1, sharing))
    segmenter = _CACHE.get(settings, threads)
    pending = [0]
    last = [time.monotonic()]

    def report(count: int) -> None:
        pending[0] += count
        now = time.monotonic()
        if now - last[0] >= EVENT_INTERVAL_S:
            worker.log_event(topic, {'frames': pending[0]})
            pending[0], last[0] = 0, now

    result = evaluate_bag(path, settings, segmenter, on_frames=report)
    if pending[0]:
        worker.log_event(topic, {'frames': pending[0]})
    result.worker = f'{worker.address} pid {os.getpid()}'
    result.model_builds = _CACHE.builds
    return result


class DaskRunner:
    """Evaluate bags on a Dask cluster: a local one (``scheduler`` None) or an existing one.

    Use as a context manager; the local cluster and the client close on exit.

    :param scheduler: ``tcp://HOST:PORT`` of a running scheduler, or None.
    :param workers: local cluster worker processes (default: the cores, at most ``bags``).
    """

    def __init__(self, scheduler: Optional[str] = None, workers: Optional[int] = None):
        self.scheduler = scheduler
        self.workers = workers
        self.cluster = None
        self.client = None

    def start(self, bags: int) -> None:
        """Start the local cluster (sized for ``bags``) or connect to the scheduler.

        :raises FleetError: when the scheduler cannot be reached.
        """
        import dask
        from distributed import Client
        # No GIL monitor or statistical profiler: they only feed the dashboard, which is off.
        dask.config.set({'distributed.admin.system-monitor.gil.enabled': False,
                         'distributed.worker.profile.enabled': False})
        if self.scheduler:
            try:
                self.client = Client(self.scheduler, timeout=CONNECT_TIMEOUT_S,
                                     set_as_default=False)
            except (OSError, TimeoutError, ValueError) as exc:
                why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise FleetError(f'cannot reach the Dask scheduler at {self.scheduler} '
                                 f'({why}); start one with `dask scheduler` or leave out '
                                 f'--scheduler for a local cluster') from None
            if not self.client.scheduler_info().get('workers'):
                try:
                    self.client.wait_for_workers(1, timeout=CONNECT_TIMEOUT_S)
                except TimeoutError:
                    self.close()
                    raise FleetError(f'the Dask scheduler at {self.scheduler} has no workers; '
                                     f'start some with `dask worker {self.scheduler}`') from None
            return
        import logging
        from distributed import LocalCluster
        cores = available_cores()
        workers = self.workers or max(1, min(cores, bags))
        self.workers = workers
        with _workers_ignore_sigint(), _environment_kept():
            self.cluster = LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, host='127.0.0.1',
                scheduler_port=0, dashboard_address=None, worker_dashboard_address=None,
                # Task failures come back through their futures; what workers would log
                # besides is shutdown noise (a heartbeat racing the scheduler's close).
                silence_logs=logging.CRITICAL)
        self.client = Client(self.cluster, set_as_default=False)

    def threads_by_host(self) -> Dict[str, int]:
        """Return Dask threads per worker host, from the scheduler."""
        hosts: Dict[str, int] = {}
        for info in self.client.scheduler_info(n_workers=-1)['workers'].values():
            hosts[info['host']] = hosts.get(info['host'], 0) + int(info['nthreads'])
        return hosts

    def describe(self) -> Dict[str, object]:
        """Return what ran the bags: scheduler address, workers and their threads."""
        info = self.client.scheduler_info(n_workers=-1)
        return {'kind': 'dask', 'scheduler': info.get('address'),
                'local': self.cluster is not None, 'workers': len(info['workers']),
                'dask_threads': sum(int(w['nthreads']) for w in info['workers'].values())}

    def run(self, paths: List[str], settings: FleetSettings,
            on_frames: Callable[[int], None], stop: Callable[[], bool]) -> Iterator[BagResult]:
        """Submit one task per bag and yield results as bags finish.

        Stops submitting and cancels what is left when ``stop()`` turns True.

        :raises ModelError: when a worker cannot build the model (the rest is cancelled).
        """
        from distributed import as_completed
        if settings.threads == 0 and self.cluster is not None:
            # Local cluster: share this machine's cores among the worker processes.
            settings = _with_threads(settings, max(1, available_cores() // self.workers))
        run = uuid.uuid4().hex[:12]
        topic = f'evit-ros-evaluate-{run}'
        self.client.subscribe_topic(topic, lambda event: on_frames(int(event[1]['frames'])))
        hosts = self.threads_by_host()
        futures = {self.client.submit(evaluate_on_worker, path, settings, hosts, topic,
                                      key=f'evit-ros-evaluate-{run}-{i}', pure=False): path
                   for i, path in enumerate(paths)}
        done = as_completed(list(futures), loop=self.client.loop)
        try:
            while not done.is_empty():
                if stop():
                    return
                if not done.has_ready():
                    time.sleep(0.1)
                    continue
                for future in done.next_batch(block=False):
                    yield self._result(future, futures[future])
        finally:
            self.client.cancel([f for f in futures if not f.done()])
            try:
                self.client.unsubscribe_topic(topic)
            except Exception:  # the client may already be closing; nothing to undo then
                pass

    @staticmethod
    def _result(future, path: str) -> BagResult:
        try:
            return future.result()
        except ModelError:
            raise
        except Exception as exc:  # a worker that died on this bag, or any task error
            text = str(exc).strip().splitlines()
            return failed(path, f'{type(exc).__name__}: {text[0] if text else "task failed"}')

    def close(self) -> None:
        """Close the client and the local cluster (if this runner started one)."""
        if self.client is not None:
            self.client.close(timeout=10)
            self.client = None
        if self.cluster is not None:
            self.cluster.close(timeout=20)
            self.cluster = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class LocalRunner:
    """Evaluate bags one after another in this process, without Dask (``--workers 0``)."""

    def __init__(self):
        self.cache = SegmenterCache()

    def start(self, bags: int) -> None:
        """Nothing to start."""

    def describe(self) -> Dict[str, object]:
        """Return what ran the bags: this process."""
        return {'kind': 'in-process', 'scheduler': None, 'local': True, 'workers': 1,
                'dask_threads': 0}

    def run(self, paths: List[str], settings: FleetSettings,
            on_frames: Callable[[int], None], stop: Callable[[], bool]) -> Iterator[BagResult]:
        """Yield each bag's result in order; a bag cut short by ``stop`` is not yielded."""
        for path in paths:
            if stop():
                return
            segmenter = self.cache.get(settings, settings.threads)
            result = evaluate_bag(path, settings, segmenter, on_frames=on_frames, stop=stop)
            if stop():
                return
            result.worker = f'in-process pid {os.getpid()}'
            result.model_builds = self.cache.builds
            yield result

    def close(self) -> None:
        """Nothing to close."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@contextlib.contextmanager
def _workers_ignore_sigint():
    """Start worker processes with SIGINT ignored (it is inherited by the processes).

    Ctrl-C reaches every process of the terminal's group; the client alone must handle
    it (cancel, record, report, close the cluster), not workers dying with tracebacks.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def _environment_kept():
    """Give this process its environment back after Dask has started local workers.

    Dask's nannies run in this process and write their pre-spawn variables
    (``OMP_NUM_THREADS=1``, ``MKL_NUM_THREADS=1``, ``MALLOC_TRIM_THRESHOLD_``...) into its
    ``os.environ`` for the workers to inherit. Left there, every process started later
    (a ``segmentation_node`` from a replay, say) would run torch on one thread and give
    other label maps than this process.
    """
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _with_threads(settings: FleetSettings, threads: int) -> FleetSettings:
    from dataclasses import replace
    return replace(settings, threads=threads)


__all__ = ['DaskRunner', 'LocalRunner', 'ModelError', 'available_cores',
           'evaluate_on_worker']
