"""The report's PNG plots, drawn with matplotlib's Agg backend (no display needed)."""

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np


def _pyplot():
    import matplotlib
    matplotlib.use('Agg', force=True)
    import matplotlib.pyplot as plt
    return plt


def plot_per_class_iou(path: Path, per_class: Dict[str, Optional[float]],
                       miou: Optional[float]) -> None:
    """Horizontal bars of per-class IoU (%) with the mIoU as a line."""
    plt = _pyplot()
    names = list(per_class)
    values = [(v or 0.0) * 100 for v in per_class.values()]
    fig, ax = plt.subplots(figsize=(7, 0.32 * max(4, len(names)) + 1.2), dpi=100)
    if names:
        bars = ax.barh(range(len(names)), values, color='#4878a8')
        for bar, raw, value in zip(bars, per_class.values(), values):
            ax.text(value + 1, bar.get_y() + bar.get_height() / 2,
                    'n/a' if raw is None else f'{value:.1f}', va='center', fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.invert_yaxis()
    if miou is not None:
        ax.axvline(miou * 100, color='#c44e52', linestyle='--', label=f'mIoU {miou * 100:.1f}')
        ax.legend(loc='lower right', fontsize=8)
    elif not names:
        ax.text(0.5, 0.5, 'no ground truth: accuracy not scored', ha='center',
                transform=ax.transAxes)
    ax.set_xlim(0, 105)
    ax.set_xlabel('IoU (%)')
    ax.set_title('Per-class IoU')
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_latency(path: Path, latencies_ms: Sequence[float], title: str) -> None:
    """Histogram and empirical CDF of per-frame latencies, with p50/p90/p99 marked."""
    plt = _pyplot()
    values = np.sort(np.asarray(latencies_ms, dtype=np.float64))
    fig, (hist, cdf) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=100)
    if values.size:
        hist.hist(values, bins=min(50, max(5, values.size // 3)), color='#4878a8')
        cdf.plot(values, np.arange(1, values.size + 1) / values.size, color='#4878a8')
        for q, colour in ((50, '#55a868'), (90, '#dd8452'), (99, '#c44e52')):
            value = np.percentile(values, q)
            for ax in (hist, cdf):
                ax.axvline(value, color=colour, linestyle='--', linewidth=1,
                           label=f'p{q} {value:.1f} ms')
        cdf.legend(loc='lower right', fontsize=8)
    else:
        hist.text(0.5, 0.5, 'no frames', ha='center', transform=hist.transAxes)
    hist.set_xlabel('latency (ms)')
    hist.set_ylabel('frames')
    hist.set_title('Histogram')
    cdf.set_xlabel('latency (ms)')
    cdf.set_ylabel('fraction of frames')
    cdf.set_ylim(0, 1.02)
    cdf.set_title('CDF')
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def legend_classes(samples, class_names: Sequence[str]) -> List[int]:
    """Return the class ids seen in the samples' predictions and ground truth, in order."""
    seen = set()
    for sample in samples:
        for labels in (sample.prediction, sample.ground_truth):
            if labels is not None:
                seen.update(int(v) for v in np.unique(labels))
    return [i for i in sorted(seen) if i < len(class_names)]


def plot_samples(path: Path, samples, palette: np.ndarray,
                 class_names: Optional[Sequence[str]] = None) -> List[str]:
    """Draw a strip of frames: input, prediction and ground truth (coloured by class).

    With ``class_names``, a legend below names the colour of every class that appears.

    :returns: the class names in the legend, in id order.
    """
    from matplotlib.patches import Patch
    plt = _pyplot()
    rows = max(1, len(samples))
    aspect = samples[0].rgb.shape[0] / samples[0].rgb.shape[1] if samples else 0.75
    shown = legend_classes(samples, class_names) if class_names else []
    legend_rows = -(-len(shown) // 6)
    fig, axes = plt.subplots(rows, 3, figsize=(11, (11 / 3 * aspect + 0.4) * rows
                                               + 0.3 * legend_rows), dpi=100, squeeze=False)
    for ax in axes.ravel():
        ax.axis('off')
    for row, sample in zip(axes, samples):
        row[0].imshow(sample.rgb)
        row[0].set_title(f'frame {sample.index}: input', fontsize=9)
        row[1].imshow(palette[sample.prediction])
        row[1].set_title('prediction', fontsize=9)
        if sample.ground_truth is not None:
            row[2].imshow(palette[sample.ground_truth])
            row[2].set_title('ground truth (black: not scored)', fontsize=9)
        else:
            row[2].text(0.5, 0.5, 'no ground truth', ha='center', transform=row[2].transAxes)
    if not samples:
        axes[0][1].text(0.5, 0.5, 'no frames', ha='center', transform=axes[0][1].transAxes)
    names = [class_names[i] for i in shown]
    if shown:
        handles = [Patch(facecolor=palette[i] / 255.0, edgecolor='black', linewidth=0.5,
                         label=class_names[i]) for i in shown]
        fig.legend(handles=handles, loc='lower center', ncol=min(6, len(handles)),
                   fontsize=8, frameon=False)
        fig.tight_layout(rect=(0, 0.3 * legend_rows / fig.get_figheight(), 1, 1))
    else:
        fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return names
