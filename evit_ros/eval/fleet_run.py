"""One fleet evaluation from start to report: resume, run, record as bags finish, merge.

:func:`evaluate_fleet` takes the bags, reuses what ``OUT/bags`` already holds for them (made
with the same settings), has a runner (:mod:`evit_ros.eval.cluster`: Dask, or this process)
evaluate the rest, records each result the moment it arrives, and writes the merged report.
SIGINT / SIGTERM stop it early: finished bags stay recorded, a partial report is written,
and the next run goes on from there.
"""

import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List

from evit_ros.eval.fleet import (bag_id, BagResult, count_frames, failed, FleetError,
                                 FleetSettings, load_result, read_record, save_result)
from evit_ros.eval.progress import Progress

#: Files of the fleet report (``--force`` replaces them; ``bags/`` records are per bag).
OUTPUT_NAMES = ('report.json', 'report.md', 'frames.csv', 'per_class_iou.png', 'latency.png',
                'confusion.png', 'worst_frames.png')


@dataclass
class FleetOutcome:
    """What :func:`evaluate_fleet` did: the report and the per-bag results."""

    report: Dict[str, object]
    results: List[BagResult]

    @property
    def failed(self) -> int:
        """Number of bags that failed."""
        return sum(r.status == 'failed' for r in self.results)


def _check_records(records: Path, paths: List[Path], settings: FleetSettings) -> None:
    """Refuse to mix results made with other settings into this run's report."""
    wanted = settings.fingerprint()
    for path in paths:
        meta = read_record(records, path)
        if meta and meta.get('status') == 'ok' and meta.get('settings') != wanted:
            theirs = meta.get('settings') or {}
            diff = ', '.join(f'{k} {theirs.get(k)!r} (now {v!r})' for k, v in wanted.items()
                             if theirs.get(k) != v)
            raise FleetError(f'{records} holds a result for {path} made with other settings: '
                             f'{diff}; pass --force to redo the bags, or choose another --out')


def _forget(records: Path, paths: List[Path], out: Path) -> None:
    for path in paths:
        for suffix in ('.json', '.npz'):
            target = records / f'{bag_id(path)}{suffix}'
            if target.exists():
                target.unlink()
    for name in OUTPUT_NAMES:
        if (out / name).exists():
            (out / name).unlink()


class _FrameProgress:
    """A thread-safe front for :class:`Progress`: frames done, with bags in the note.

    The bar starts with the first frame done, so that its rate and ETA are those of the
    evaluation, not of the workers starting up and loading the model.
    """

    def __init__(self, total: int, bags: int, enabled: bool):
        self.total = total
        self.enabled = enabled
        self.progress = None
        self.bags = bags
        self.done = 0
        self.failed = 0
        self._lock = threading.Lock()

    def _bar(self) -> Progress:
        if self.progress is None:
            self.progress = Progress(self.total, 'evaluate')
        return self.progress

    def frames(self, count: int) -> None:
        with self._lock:
            if self.enabled:
                self._bar().update(count, self._note())

    def bag(self, result: BagResult) -> None:
        with self._lock:
            self.done += 1
            self.failed += result.status == 'failed'
            if self.progress is not None:
                self.progress.update(0, self._note())

    def _note(self) -> str:
        failed = f', {self.failed} failed' if self.failed else ''
        return f'bags {self.done}/{self.bags}{failed}'

    def close(self) -> None:
        with self._lock:
            if self.progress:
                self.progress.close()


def evaluate_fleet(paths: List[Path], settings: FleetSettings, out: Path, runner,
                   force: bool = False, progress: bool = True,
                   say: Callable[[str], None] = lambda text: print(text, file=sys.stderr)
                   ) -> FleetOutcome:
    """Evaluate ``paths`` with ``runner`` into ``out``; see the module doc.

    :param runner: a :class:`~evit_ros.eval.cluster.DaskRunner` or
        :class:`~evit_ros.eval.cluster.LocalRunner` (not yet started).
    :param force: redo bags recorded by an earlier run.
    :param say: where the run's few lines of news go.
    :raises FleetError: for an unusable ``out``, records made with other settings, an
        unreachable scheduler, or a model that cannot be built.
    """
    from evit_ros.eval.fleet_report import build_report, write_report
    from evit_ros.eval.replay import StopSignals
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FleetError(f'{out} is a file, not a directory; choose another --out')
    records = out / 'bags'
    if force:
        _forget(records, paths, out)
    else:
        _check_records(records, paths, settings)
    results: Dict[str, BagResult] = {}
    for path in paths:
        earlier = load_result(records, path)
        if earlier is not None:
            earlier.status = 'skipped'
            results[str(path)] = earlier
    if results:
        say(f'evaluate: skipping {len(results)} of {len(paths)} bags evaluated by an earlier '
            f'run (records in {records}; --force redoes them)')
    todo = [str(p) for p in paths if str(p) not in results]
    started = time.monotonic()
    classes = next((r.classes for r in results.values() if r.classes), None)
    cluster: Dict[str, object] = {'kind': 'none: every bag was recorded earlier'}
    with StopSignals() as stop:
        if todo:
            frames = sum(count_frames(p, settings) for p in todo)
            ticker = _FrameProgress(frames, len(todo), progress)
            announced = False
            try:
                runner.start(len(todo))
                out.mkdir(parents=True, exist_ok=True)  # not before: a failed start leaves none
                cluster = runner.describe()
                say(f"evaluate: {len(todo)} bags ({frames} frames) on {_where(cluster)}")
                for result in runner.run(todo, settings, ticker.frames, stop):
                    if result.status == 'ok' and classes is not None \
                            and result.classes != classes:
                        result = failed(result.path, f'its labels give {len(result.classes)} '
                                        f'classes ({result.label_format}), the fleet has '
                                        f'{len(classes)}; evaluate it apart or set '
                                        f'--label-format')
                    if result.status == 'ok':
                        classes = classes or result.classes
                        if not announced:
                            say(f'evaluate: running {result.backend} on {result.device}, '
                                f'{result.precision}, network '
                                f'{"x".join(map(str, result.network_size))}')
                            announced = True
                    save_result(records, result, settings)
                    results[result.path] = result
                    ticker.bag(result)
                    if result.status == 'failed':
                        say(f'evaluate: {result.path} failed: {result.reason}')
            finally:
                ticker.close()
                runner.close()
        interrupted = stop.signum
    ordered = [results.get(str(p)) or failed(p, 'not evaluated: the run was stopped first')
               for p in paths]
    out.mkdir(parents=True, exist_ok=True)
    report = build_report(ordered, settings, out, time.monotonic() - started, cluster,
                          interrupted=interrupted)
    if interrupted is not None:
        left = len(paths) - len(results)
        report['error'] = f'stopped with {left} bags not evaluated; run again to go on'
    write_report(out, report, ordered)
    return FleetOutcome(report, ordered)


def _where(cluster: Dict[str, object]) -> str:
    if cluster['kind'] == 'in-process':
        return f'this process (pid {os.getpid()}), one bag at a time'
    local = 'a local Dask cluster' if cluster['local'] else 'the Dask cluster'
    return (f"{local} at {cluster['scheduler']}: {cluster['workers']} workers, "
            f"{cluster['dask_threads']} Dask threads")


__all__ = ['FleetOutcome', 'OUTPUT_NAMES', 'evaluate_fleet']
