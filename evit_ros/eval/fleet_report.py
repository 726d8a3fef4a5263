"""A fleet's merged report: ``report.json``, ``report.md``, ``frames.csv`` and PNG plots.

``report.json`` has the keys of a replay's report (see :mod:`evit_ros.eval.report`) for
all bags together: ``miou``, ``pixel_accuracy`` and ``per_class_iou`` from the confusion
matrices of every frame of every bag summed (so they are those of one replay over all the
frames), ``latency_ms`` over every frame, ``frames`` and friends. Plus:

- ``bags``: one entry per bag in the order given: ``path``, ``id``, ``status`` (``ok``:
  evaluated by this run; ``skipped``: evaluated by an earlier run, its recorded result
  merged; ``failed``: not evaluated, ``reason`` says why, not merged), ``frames``,
  ``frames_scored``, ``miou``, ``pixel_accuracy``, ``latency_ms``, ``worker``, ``wall_s``;
- ``bags_ok``, ``bags_skipped``, ``bags_failed``; ``worst_frames`` (bag, frame index, stamp,
  mIoU, pixel accuracy) and ``worst_by``; ``confusion_matrix`` (rows: ground truth, columns:
  prediction, the last column predictions outside the evaluation classes); ``cluster``.

``throughput_fps`` counts only the frames evaluated by this run over its wall time.
"""

import csv
import json
import signal
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from evit_ros.eval.fleet import BagResult, bag_id, FleetSettings, Thumbnail, WORST_BY
from evit_ros.eval.metrics import ConfusionMatrix, latency_summary

PLOTS = ('per_class_iou.png', 'latency.png', 'confusion.png', 'worst_frames.png')
GALLERY = 6
MAX_ERRORS = 20


def _merged(results: List[BagResult]) -> Optional[ConfusionMatrix]:
    matrices = [r.confusion for r in results if r.confusion is not None]
    if not matrices:
        return None
    matrix = ConfusionMatrix(matrices[0].shape[0])
    for m in matrices:
        matrix.matrix += m
    return matrix


def _joined(values) -> Optional[str]:
    seen = list(dict.fromkeys(str(v) for v in values if v is not None))
    return ', '.join(seen) if seen else None


def _nan_to_none(value) -> Optional[float]:
    return None if value is None or np.isnan(value) else float(value)


def worst_frames(results: List[BagResult], count: int = GALLERY):
    """Return ``(result, thumbnail)`` of the ``count`` worst frames over all bags."""
    pairs = [(r, t) for r in results for t in r.worst]
    pairs.sort(key=lambda p: (p[1].miou, p[1].pixel_accuracy, p[0].path, p[1].index))
    return pairs[:count]


def build_report(results: List[BagResult], settings: FleetSettings, out: Path,
                 wall_s: float, cluster: Dict[str, object],
                 interrupted: Optional[int] = None) -> Dict[str, object]:
    """Merge the bags' results into the fleet's report (see the module doc)."""
    merged = [r for r in results if r.status in ('ok', 'skipped')]
    matrix = _merged(merged)
    classes = next((r.classes for r in merged if r.classes), [])
    frames = sum(r.frames for r in merged)
    scored = sum(r.frames_scored for r in merged)
    latencies = np.concatenate([r.latency_ms for r in merged]) if merged else np.zeros(0)
    fresh = sum(r.frames for r in results if r.status == 'ok')
    errors = [f'{Path(r.path).name}: {e}' for r in results for e in r.errors]
    errors += [f'{Path(r.path).name}: {r.reason}' for r in results if r.status == 'failed']
    if matrix is not None and matrix.pixels:
        accuracy = {'miou': matrix.miou(), 'pixel_accuracy': matrix.pixel_accuracy(),
                    'per_class_iou': matrix.per_class_iou(classes)}
    else:
        accuracy = {'miou': None, 'pixel_accuracy': None, 'per_class_iou': {}}
    size = settings.network_size or next((r.network_size for r in merged if r.network_size),
                                         None)
    report: Dict[str, object] = {
        'mode': 'offline',
        'model': settings.model,
        'backend': _joined(r.backend for r in merged),
        'device': _joined(r.device for r in merged),
        'precision': _joined(r.precision for r in merged),
        'network_size': [int(v) for v in size] if size else None,
        'bag': None,
        'image_topic': settings.image_topic,
        'label_source': _joined(r.label_source for r in merged),
        'label_format': _joined(r.label_format for r in merged),
        'classes': list(classes),
        'frames': frames,
        'frames_scored': scored,
        'frames_unlabelled': frames - scored,
        'dropped': 0,
        'unreadable': len(errors),
        **accuracy,
        'latency_ms': latency_summary(latencies),
        'latency_source': 'Segmenter: preprocess + inference + postprocess, per frame, '
                          'on the worker that ran the bag',
        'throughput_fps': fresh / wall_s if wall_s > 0 and fresh else 0.0,
        'wall_s': wall_s,
        'interrupted': signal.Signals(interrupted).name if interrupted else None,
        'error': None,
        'errors': errors[:MAX_ERRORS],
        'bags': [_bag_entry(r) for r in results],
        'bags_ok': sum(r.status == 'ok' for r in results),
        'bags_skipped': sum(r.status == 'skipped' for r in results),
        'bags_failed': sum(r.status == 'failed' for r in results),
        'worst_by': WORST_BY,
        'worst_frames': [{'bag': r.path, 'index': t.index, 'stamp_ns': t.stamp_ns,
                          'miou': t.miou, 'pixel_accuracy': t.pixel_accuracy}
                         for r, t in worst_frames(merged)],
        'confusion_matrix': matrix.matrix.tolist() if matrix is not None else None,
        'cluster': cluster,
    }
    out = Path(out)
    report['outputs'] = {'report_md': str(out / 'report.md'),
                         'frames_csv': str(out / 'frames.csv'),
                         'records': str(out / 'bags'),
                         'plots': [str(out / name) for name in PLOTS]}
    return report


def _bag_entry(result: BagResult) -> Dict[str, object]:
    stats = latency_summary(result.latency_ms)
    matrix = _merged([result])
    return {'path': result.path, 'id': bag_id(result.path), 'status': result.status,
            'reason': result.reason, 'frames': result.frames,
            'frames_scored': result.frames_scored,
            'miou': _nan_to_none(result.miou()),
            'pixel_accuracy': (_nan_to_none(matrix.pixel_accuracy())
                               if matrix is not None and matrix.pixels else None),
            'latency_ms': {k: stats[k] for k in ('p50', 'p90', 'mean', 'max')},
            'backend': result.backend, 'device': result.device,
            'precision': result.precision, 'worker': result.worker,
            'wall_s': result.wall_s}


def _pct(value) -> str:
    return '–' if value is None else f'{value * 100:.2f}'


def _ms(value) -> str:
    return '–' if value is None else f'{value:.1f}'


def markdown(report: Dict[str, object]) -> str:
    """Return ``report.md``: the fleet, its bags, per-class IoU, plots and worst frames."""
    size = report['network_size']
    lines = ['# Fleet evaluation report', '',
             '| run | |', '|---|---|',
             f"| model | {report['model']} |",
             f"| backend / device / precision | {report['backend']} / {report['device']} / "
             f"{report['precision']} |",
             f"| network size | {f'{size[0]}x{size[1]}' if size else '–'} |",
             f"| image topic | `{report['image_topic']}` |",
             f"| ground truth | {report['label_source']} ({report['label_format']}) |",
             f"| bags | {len(report['bags'])}: {report['bags_ok']} evaluated, "
             f"{report['bags_skipped']} recorded earlier, {report['bags_failed']} failed |",
             f"| frames | {report['frames']} ({report['frames_scored']} scored) |",
             f"| throughput | {report['throughput_fps']:.2f} frames/s over this run's "
             f"{report['wall_s']:.1f} s |", '']
    if report.get('interrupted'):
        lines += [f"**Partial report**: stopped by {report['interrupted']}; bags finished "
                  f"so far are recorded and a re-run goes on from there.", '']
    latency = report['latency_ms']
    lines += ['| accuracy (all frames of all bags) | % |', '|---|---|',
              f"| mIoU | {_pct(report['miou'])} |",
              f"| pixel accuracy | {_pct(report['pixel_accuracy'])} |", '',
              '| latency (ms) | p50 | p90 | p99 | max | mean |', '|---|---|---|---|---|---|',
              f"| segmenter | {_ms(latency['p50'])} | {_ms(latency['p90'])} | "
              f"{_ms(latency['p99'])} | {_ms(latency['max'])} | {_ms(latency['mean'])} |", '',
              '## Bags', '',
              '| bag | status | frames | mIoU % | latency p50 (ms) | worker | note |',
              '|---|---|---|---|---|---|---|']
    for bag in report['bags']:
        note = bag['reason'] or ('recorded by an earlier run' if bag['status'] == 'skipped'
                                 else '')
        lines.append(f"| `{bag['path']}` | {bag['status']} | {bag['frames']} | "
                     f"{_pct(bag['miou'])} | {_ms(bag['latency_ms']['p50'])} | "
                     f"{bag['worker'] or '–'} | {note.replace('|', '/')} |")
    lines.append('')
    if report['per_class_iou']:
        lines += ['## Per-class IoU', '', '| class | IoU % |', '|---|---|']
        lines += [f'| {name} | {_pct(value)} |'
                  for name, value in report['per_class_iou'].items()]
        lines.append('')
    lines += ['## Plots', '']
    lines += [f'![{Path(p).stem}]({Path(p).name})' for p in report['outputs']['plots']]
    lines += ['', f"## Worst frames ({report['worst_by']})", '',
              '| bag | frame | mIoU % | pixel accuracy % |', '|---|---|---|---|']
    lines += [f"| `{w['bag']}` | {w['index']} | {_pct(w['miou'])} | "
              f"{_pct(w['pixel_accuracy'])} |" for w in report['worst_frames']]
    if report['errors']:
        lines += ['', '## Problems met', ''] + [f'- {e}' for e in report['errors']]
    return '\n'.join(lines) + '\n'


def write_frames_csv(path: Path, results: List[BagResult]) -> None:
    """Write one row per frame of every merged bag."""
    with open(path, 'w', newline='') as handle:
        writer = csv.writer(handle)
        writer.writerow(['bag', 'index', 'stamp_ns', 'miou', 'pixel_accuracy', 'latency_ms'])
        for r in results:
            if r.status == 'failed':
                continue
            latency = list(r.latency_ms) + [None] * (len(r.frame_index) - len(r.latency_ms))
            for i, stamp, miou, acc, ms in zip(r.frame_index, r.frame_stamp, r.frame_miou,
                                               r.frame_accuracy, latency):
                writer.writerow([r.path, int(i), int(stamp),
                                 '' if np.isnan(miou) else f'{miou:.6f}',
                                 '' if np.isnan(acc) else f'{acc:.6f}',
                                 '' if ms is None else f'{ms:.3f}'])


def write_report(out: Path, report: Dict[str, object], results: List[BagResult]) -> None:
    """Write ``report.json``, ``report.md``, ``frames.csv`` and the plots into ``out``."""
    from evit_ros.eval.plots import plot_latency, plot_per_class_iou
    out = Path(out)
    merged = [r for r in results if r.status != 'failed']
    plot_per_class_iou(out / 'per_class_iou.png', report['per_class_iou'], report['miou'])
    plot_latency(out / 'latency.png', np.concatenate([r.latency_ms for r in merged])
                 if merged else [], 'Segmenter latency per frame, all bags')
    plot_confusion(out / 'confusion.png', report['confusion_matrix'], report['classes'])
    palette = next((r.palette for r in merged if r.palette is not None), None)
    plot_gallery(out / 'worst_frames.png', worst_frames(merged), palette)
    write_frames_csv(out / 'frames.csv', results)
    (out / 'report.md').write_text(markdown(report))
    tmp = out / 'report.json.part'
    tmp.write_text(json.dumps(report, indent=2) + '\n')
    tmp.replace(out / 'report.json')


def _pyplot():
    import matplotlib
    matplotlib.use('Agg', force=True)
    import matplotlib.pyplot as plt
    return plt


def plot_confusion(path: Path, matrix, classes: List[str]) -> None:
    """Heat map of the confusion matrix, each ground-truth row as fractions of its pixels."""
    plt = _pyplot()
    n = len(classes)
    fig, ax = plt.subplots(figsize=(0.5 * max(n, 4) + 3, 0.45 * max(n, 4) + 2), dpi=100)
    if matrix is not None and n:
        counts = np.asarray(matrix, np.float64)
        rows = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        ax.imshow(rows, cmap='Blues', vmin=0, vmax=1)
        for (i, j), value in np.ndenumerate(rows):
            if value >= 0.005:
                ax.text(j, i, f'{value * 100:.0f}', ha='center', va='center', fontsize=6,
                        color='white' if value > 0.5 else 'black')
        ax.set_xticks(range(n + 1), list(classes) + ['other'], rotation=60, ha='right',
                      fontsize=7)
        ax.set_yticks(range(n), classes, fontsize=7)
        ax.set_xlabel('prediction')
        ax.set_ylabel('ground truth')
    else:
        ax.text(0.5, 0.5, 'no ground truth: nothing scored', ha='center',
                transform=ax.transAxes)
        ax.axis('off')
    ax.set_title('Confusion matrix (% of each ground-truth class)')
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_gallery(path: Path, worst: List, palette: Optional[np.ndarray]) -> None:
    """Rows of input / prediction / ground truth for the worst frames of the fleet."""
    plt = _pyplot()
    rows = max(1, len(worst))
    thumbs: List[Thumbnail] = [t for _, t in worst]
    aspect = thumbs[0].rgb.shape[0] / thumbs[0].rgb.shape[1] if thumbs else 0.75
    fig, axes = plt.subplots(rows, 3, figsize=(10, (10 / 3 * aspect + 0.45) * rows), dpi=100,
                             squeeze=False)
    for ax in axes.ravel():
        ax.axis('off')
    table = palette if palette is not None else np.zeros((256, 3), np.uint8)
    for row, (result, thumb) in zip(axes, worst):
        row[0].imshow(thumb.rgb)
        row[0].set_title(f'{Path(result.path).name} frame {thumb.index}', fontsize=8)
        row[1].imshow(table[thumb.prediction])
        row[1].set_title(f'prediction (frame mIoU {thumb.miou * 100:.1f})', fontsize=8)
        row[2].imshow(table[thumb.ground_truth])
        row[2].set_title('ground truth (black: not scored)', fontsize=8)
    if not worst:
        axes[0][1].text(0.5, 0.5, 'no scored frames', ha='center',
                        transform=axes[0][1].transAxes)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
