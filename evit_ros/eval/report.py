"""A replay's report: ``report.json``, ``report.md``, ``frames.csv`` and PNG plots.

``report.json`` keys: ``mode``, ``model``, ``backend``, ``device``, ``precision`` (what
ran, not what was asked: ``auto`` resolves to a backend), ``network_size`` ([H, W]),
``network_size_source`` (``given``, or how it was chosen for the camera), ``bag``,
``image_topic``, ``label_source``, ``label_format``, ``classes``, ``frames`` (images
replayed), ``frames_scored`` (with ground truth and a prediction), ``frames_unlabelled``,
``dropped`` (sent to the node, never returned), ``unreadable``, ``miou`` and
``pixel_accuracy`` (fractions, 0..1, summed over the set),
``per_class_iou`` (class -> IoU or null when the class never appeared), ``latency_ms``
(offline: the Segmenter's preprocess + inference + postprocess per frame; node: the node's
own figures from ``/diagnostics``), ``pipeline_latency_ms`` (node mode: publish to label map
received, per frame), ``node_frames_dropped`` (int, the node's own count), ``throughput_fps``
(label maps back per second, first frame in to last label map out), ``wall_s``,
``interrupted``, ``error``, ``errors`` and ``outputs`` (``plots`` lists only the plots
written: none for an interrupted run).

``frames.csv``: one row per frame that came back; ``latency_ms`` is the per-frame latency
the mode measures (offline: the Segmenter's call; node: publish to label map back, the same
as ``pipeline_latency_ms``).
"""

import csv
import json
import signal
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from evit_ros.eval.metrics import latency_summary

PLOTS = ('per_class_iou.png', 'latency.png', 'samples.png')
MAX_ERRORS = 20


def _node_latency(diagnostics: Dict[str, str], series: str) -> Dict[str, Optional[float]]:
    """Read a latency series from the node's /diagnostics key/values.

    The node reports p50, p95, p99 and max over its window; ``p90`` and ``mean`` stay
    ``None`` so that the keys are the same as in offline mode.
    """
    out: Dict[str, Optional[float]] = {'p50': None, 'p90': None, 'p95': None, 'p99': None,
                                       'max': None, 'mean': None}
    for key in ('p50', 'p95', 'p99', 'max'):
        try:
            value = float(diagnostics[f'{series}_ms_{key}'])
        except (KeyError, ValueError):
            continue
        out[key] = None if np.isnan(value) else value
    return out


def throughput(run) -> Tuple[float, float]:
    """Return ``(frames per second, seconds)``: label maps that came back over the run's time.

    The time runs from the first frame in to the last label map out (node start-up and
    model loading excluded). The progress bar's final rate is this figure too.
    """
    returned = len(run.scorer.records)
    wall = max(1e-9, (run.finished or run.started) - run.started)
    return (returned / wall if returned else 0.0), wall


def _count(value: Optional[str]) -> Optional[int]:
    """Return an integer from the node's /diagnostics (strings there), ``None`` if absent."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def build_report(run, interrupted: Optional[int] = None,
                 error: Optional[str] = None) -> Dict[str, object]:
    """Return the report of a finished (or stopped) :class:`evit_ros.eval.replay.Run`."""
    options = run.options
    scored = run.scorer.frames_scored
    returned = len(run.scorer.records)
    fps, wall = throughput(run)
    errors: List[str] = list(run.reader.errors) + list(run.unsupported)
    report: Dict[str, object] = {
        'mode': options.mode,
        'model': run.entry.name,
        'backend': run.backend_name,
        'device': getattr(run, 'device', options.device),
        'precision': getattr(run, 'precision', options.precision),
        'network_size': [int(v) for v in run.network_size],
        'network_size_source': getattr(run, 'network_size_source', 'given'),
        'bag': str(options.bag),
        'image_topic': options.image_topic,
        'label_source': run.labels.description,
        'label_format': run.label_format if run.labels.description != 'none' else None,
        'classes': list(run.class_names),
        'frames': run.frames,
        'frames_scored': scored,
        'frames_unlabelled': returned - scored,
        'dropped': run.dropped,
        'unreadable': len(errors),
        **run.scorer.summary(),
    }
    if options.mode == 'offline':
        report['latency_ms'] = latency_summary(run.latencies)
        report['latency_source'] = 'Segmenter: preprocess + inference + postprocess, per frame'
    else:
        report['latency_ms'] = _node_latency(run.node_diagnostics, 'total')
        report['latency_source'] = ("segmentation_node /diagnostics: Segmenter total over the "
                                    "node's last 300 frames")
        report['node_latency_ms'] = _node_latency(run.node_diagnostics, 'node')
        report['pipeline_latency_ms'] = latency_summary(run.pipeline)
        report['node_frames_dropped'] = _count(run.node_diagnostics.get('frames_dropped'))
        report['rate_hz'] = options.rate
        report['lockstep'] = options.lockstep
    report['throughput_fps'] = fps
    report['wall_s'] = wall
    report['interrupted'] = signal.Signals(interrupted).name if interrupted else None
    report['error'] = error
    report['errors'] = errors[:MAX_ERRORS]
    if run.scorer.resized:
        report['note'] = (f'{run.scorer.resized} label maps were resized (nearest) to their '
                          f'ground truth size for scoring')
    out = Path(options.out)
    report['outputs'] = {
        'label_bag': str(out / 'labels'),
        'label_topic': run.out_topic,
        'report_md': str(out / 'report.md'),
        'frames_csv': str(out / 'frames.csv'),
        # An interrupted run writes no plots (see write_report), so it lists none.
        'plots': [] if interrupted else [str(out / name) for name in PLOTS],
    }
    return report


def _pct(value) -> str:
    return '–' if value is None else f'{value * 100:.2f}'


def _ms(value) -> str:
    return '–' if value is None else f'{value:.1f}'


def latency_rows(report: Dict[str, object]) -> List[List[str]]:
    """Return table rows ``[what, p50, p90/p95, p99, max, mean]`` for the latencies."""
    rows = []
    names = [('latency_ms', 'segmenter' if report['mode'] == 'offline' else
              'segmenter (node)'), ('node_latency_ms', 'node (received to published)'),
             ('pipeline_latency_ms', 'pipeline (publish to label map back)')]
    for key, label in names:
        stats = report.get(key)
        if not stats:
            continue
        if stats.get('p90') is None and stats.get('p95') is not None:
            p9x = f"{_ms(stats['p95'])} (p95)"   # the node reports p95, not p90
        else:
            p9x = _ms(stats.get('p90'))
        rows.append([f'{label}', _ms(stats.get('p50')), p9x,
                     _ms(stats.get('p99')), _ms(stats.get('max')), _ms(stats.get('mean'))])
    return rows


def markdown(report: Dict[str, object]) -> str:
    """Return ``report.md``: the report as tables."""
    size = report['network_size']
    lines = ['# Replay report', '',
             '| run | |', '|---|---|',
             f"| mode | {report['mode']} |",
             f"| model | {report['model']} |",
             f"| backend / device / precision | {report['backend']} / {report['device']} / "
             f"{report['precision']} |",
             f'| network size | {size[0]}x{size[1]} |',
             f"| bag | `{report['bag']}` |",
             f"| image topic | `{report['image_topic']}` |",
             f"| ground truth | {report['label_source']} ({report['label_format']}) |", '',
             '| frames | |', '|---|---|',
             f"| replayed | {report['frames']} |",
             f"| scored | {report['frames_scored']} |",
             f"| without ground truth | {report['frames_unlabelled']} |",
             f"| dropped by the node | {report['dropped']} |",
             f"| unreadable | {report['unreadable']} |",
             f"| throughput | {report['throughput_fps']:.2f} frames/s |", '']
    if report.get('interrupted') or report.get('error'):
        why = report.get('error') or f"stopped by {report['interrupted']}"
        lines += [f'**Partial report**: {why}.', '']
    lines += ['| accuracy | % |', '|---|---|',
              f"| mIoU | {_pct(report['miou'])} |",
              f"| pixel accuracy | {_pct(report['pixel_accuracy'])} |", '']
    if report['per_class_iou']:
        lines += ['| class | IoU % |', '|---|---|']
        lines += [f'| {name} | {_pct(value)} |'
                  for name, value in report['per_class_iou'].items()]
        lines.append('')
    lines += ['| latency (ms) | p50 | p90 | p99 | max | mean |', '|---|---|---|---|---|---|']
    lines += ['| ' + ' | '.join(row) + ' |' for row in latency_rows(report)]
    lines += ['', f"Latency source: {report['latency_source']}.", '']
    outputs = report['outputs']
    lines += [f"Label maps: `{outputs['label_bag']}` (topic `{outputs['label_topic']}`).", '']
    lines += [f'![{Path(p).stem}]({Path(p).name})' for p in outputs['plots']]
    if report['errors']:
        lines += ['', '## Problems met', ''] + [f'- {e}' for e in report['errors']]
    return '\n'.join(lines) + '\n'


def write_frames_csv(path: Path, records) -> None:
    """Write one row per replayed frame that came back."""
    with open(path, 'w', newline='') as handle:
        writer = csv.writer(handle)
        writer.writerow(['index', 'stamp_ns', 'scored', 'miou', 'pixel_accuracy', 'latency_ms',
                         'pipeline_latency_ms'])
        for r in records:
            writer.writerow([r.index, r.stamp_ns, int(r.scored),
                             '' if r.miou is None else f'{r.miou:.6f}',
                             '' if r.pixel_accuracy is None else f'{r.pixel_accuracy:.6f}',
                             '' if r.latency_ms is None else f'{r.latency_ms:.3f}',
                             '' if r.pipeline_latency_ms is None
                             else f'{r.pipeline_latency_ms:.3f}'])


def write_report(out: Path, report: Dict[str, object], run, plots: bool = True) -> None:
    """Write ``report.json``, ``report.md``, ``frames.csv`` and (unless not ``plots``) the plots.

    An interrupted run skips the plots: drawing them takes about a second, and a stopped
    replay must exit within 2 s.
    """
    out = Path(out)
    (out / 'report.json').write_text(json.dumps(report, indent=2) + '\n')
    (out / 'report.md').write_text(markdown(report))
    write_frames_csv(out / 'frames.csv', run.scorer.records)
    if not plots:
        return
    from evit_ros.eval.plots import plot_latency, plot_per_class_iou, plot_samples
    plot_per_class_iou(out / 'per_class_iou.png', report['per_class_iou'], report['miou'])
    latencies = run.latencies if report['mode'] == 'offline' else run.pipeline
    title = ('Segmenter latency per frame' if report['mode'] == 'offline'
             else 'Pipeline latency per frame (publish to label map back)')
    plot_latency(out / 'latency.png', latencies, title)
    plot_samples(out / 'samples.png', run.scorer.final_samples(), run.scorer.palette(),
                 class_names=run.scorer.class_names)
