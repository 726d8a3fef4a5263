"""Bicubic resizing as explicit weights, and the label map of bicubically resized logits.

The release resizes logits with PyTorch's bicubic interpolation (``align_corners=False``,
Keys' kernel with ``A = -0.75``, borders clamped) and takes the argmax. At camera resolution
that means interpolating every class at every pixel: for 19 classes and a 1024x2048 frame,
40 million values, most of them spent where the answer is obvious.

:func:`bicubic_argmax` returns the same label map while interpolating only where the argmax
can change. Each output pixel reads a 4x4 window of logits; pixels sharing a window form a
block. A block is settled without interpolation when a class ``c`` provably beats every
other class ``k`` everywhere in it: with ``d = L_c - L_k`` over the window and ``N`` the
largest total negative weight of the kernel in that block (weights sum to one),
``interp(d) >= min(d) - N * (max(d) - min(d))``, so ``min(d) > N * (max(d) - min(d))``
guarantees ``c`` wins. Only the (block, class) pairs that fail the test are interpolated.
The result equals the dense computation up to float rounding at exact ties.
"""

import functools
from typing import Tuple

import numpy as np
import torch

# Keys' cubic convolution constant used by PyTorch (and OpenCV's INTER_CUBIC).
CUBIC_A = -0.75


def cubic_weights(t: np.ndarray) -> np.ndarray:
    """Return the four kernel weights (taps at -1, 0, +1, +2) for fractional offsets ``t``."""
    a = CUBIC_A

    def near(s):  # |s| <= 1
        return ((a + 2) * s - (a + 3)) * s * s + 1

    def far(s):  # 1 < |s| < 2
        return ((a * s - 5 * a) * s + 8 * a) * s - 4 * a

    t = np.asarray(t, dtype=np.float64)
    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def source_taps(n_in: int, n_out: int) -> Tuple[np.ndarray, np.ndarray]:
    """Return ``(first, weights)``: per output index, the floor source index and 4 weights.

    Taps are at ``first - 1 .. first + 2`` before clamping to ``[0, n_in - 1]``.
    """
    if n_in < 1 or n_out < 1:
        raise ValueError(f'sizes must be positive, got {n_in} -> {n_out}')
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    first = np.floor(src).astype(np.int64)
    return first, cubic_weights(src - first)


def bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Return the ``n_out x n_in`` float64 matrix of 1-D bicubic resizing (borders clamped).

    ``M @ x`` resizes a signal ``x`` along one axis exactly as
    ``F.interpolate(..., mode='bicubic', align_corners=False)`` does.
    """
    first, weights = source_taps(n_in, n_out)
    matrix = np.zeros((n_out, n_in))
    rows = np.repeat(np.arange(n_out), 4)
    cols = np.clip(first[:, None] + np.arange(-1, 3), 0, n_in - 1).reshape(-1)
    np.add.at(matrix, (rows, cols), weights.reshape(-1))
    return matrix


class _AxisPlan:
    """Output indices of one axis grouped by the source window they read."""

    def __init__(self, n_in: int, n_out: int):
        first, weights = source_taps(n_in, n_out)
        group = first - first[0]
        self.groups = int(group[-1]) + 1
        counts = np.bincount(group, minlength=self.groups)
        self.size = int(counts.max())                      # outputs per group, padded
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        slot = np.arange(n_out) - starts[group]
        padded = np.zeros((self.groups, self.size, 4))
        padded[group, slot] = weights
        self.weights = padded.astype(np.float32)
        negative = np.zeros(self.groups)
        np.maximum.at(negative, group, np.clip(-weights, 0, None).sum(axis=1))
        self.negative = negative
        self.position = group * self.size + slot            # output index -> padded index
        self.contiguous = bool(np.all(np.diff(self.position) == 1))
        # Edge padding so that every window lies inside the padded logits.
        self.pad = (max(0, 1 - int(first[0])), max(0, int(first[-1]) + 2 - (n_in - 1)))
        self.start = int(first[0]) - 1 + self.pad[0]

    def gather(self, array: np.ndarray, axis: int) -> np.ndarray:
        """Map a padded-layout axis back to output indices."""
        if self.contiguous:
            index = [slice(None)] * array.ndim
            index[axis] = slice(int(self.position[0]), int(self.position[-1]) + 1)
            return array[tuple(index)]
        return np.take(array, self.position, axis=axis)


# A camera's frames all have one size: plan each axis once, not per frame.
_axis_plan = functools.lru_cache(maxsize=16)(_AxisPlan)


def bicubic_argmax(logits, size: Tuple[int, int]) -> np.ndarray:
    """Return the argmax over classes of ``logits`` bicubically resized to ``size``.

    Equivalent to ``F.interpolate(logits, size, mode='bicubic').argmax(1)[0]`` up to
    float rounding at exact ties, at a fraction of its cost. Runs single-threaded in numpy,
    so it neither competes for nor waits on a thread pool of a busy CPU.

    :param logits: ``1xCxhxw`` or ``Cxhxw`` logits (torch tensor or numpy array, any device).
    :param size: output ``(height, width)``.
    :returns: ``uint8`` label map (``uint16`` beyond 256 classes), ``height x width``.
    """
    if isinstance(logits, torch.Tensor):
        logits = logits.detach().to('cpu', torch.float32).numpy()
    logits = np.asarray(logits, dtype=np.float32)
    if logits.ndim == 4:
        if logits.shape[0] != 1:
            raise ValueError(f'expected one image of logits, got batch {logits.shape[0]}')
        logits = logits[0]
    classes, height, width = logits.shape
    dtype = np.uint8 if classes <= 256 else np.uint16
    if (height, width) == tuple(size):
        return logits.argmax(0).astype(dtype)
    rows, cols = _axis_plan(height, int(size[0])), _axis_plan(width, int(size[1]))
    blocks = _label_blocks(logits, rows, cols, dtype)
    full = blocks.reshape(rows.groups * rows.size, cols.groups * cols.size)
    return np.ascontiguousarray(cols.gather(rows.gather(full, 0), 1))


def _label_blocks(logits: np.ndarray, rows: _AxisPlan, cols: _AxisPlan,
                  dtype) -> np.ndarray:
    """Label every block: ``(row groups, row size, col groups, col size)`` class ids."""
    ny, nx, sy, sx = rows.groups, cols.groups, rows.size, cols.size
    padded = np.pad(logits, ((0, 0), rows.pad, cols.pad), mode='edge')
    padded = padded[:, rows.start:rows.start + ny + 3, cols.start:cols.start + nx + 3]
    # Candidate winner of each block: the argmax at its window's upper-left inner tap.
    best = padded[:, 1:1 + ny, 1:1 + nx].argmax(0)
    iy, ix = np.arange(ny)[:, None], np.arange(nx)[None, :]
    # Range of L_best - L_k over each block's 4x4 window, tap by tap.
    low = high = None
    for dy in range(4):
        for dx in range(4):
            taps = padded[:, dy:dy + ny, dx:dx + nx]
            margin = taps[best, iy, ix] - taps
            if low is None:
                low, high = margin, margin.copy()
            else:
                np.minimum(low, margin, out=low)
                np.maximum(high, margin, out=high)
    negative = (rows.negative[:, None] * (1 + cols.negative[None, :])
                + (1 + rows.negative[:, None]) * cols.negative[None, :]).astype(np.float32)
    unsettled = low <= negative * (high - low)
    unsettled[best, iy, ix] = False
    blocks = np.empty((ny, sy, nx, sx), dtype)
    blocks[...] = best.astype(dtype)[:, None, :, None]
    by, bx, rival = np.nonzero(unsettled.transpose(1, 2, 0))
    if len(rival) == 0:
        return blocks
    # Interpolate L_rival - L_best over each unsettled (block, class) pair.
    winner = best[by, bx]
    oy = by[:, None, None] + np.arange(4)[None, :, None]
    ox = bx[:, None, None] + np.arange(4)[None, None, :]
    diff = padded[rival[:, None, None], oy, ox] - padded[winner[:, None, None], oy, ox]
    across = np.matmul(diff, cols.weights[bx].transpose(0, 2, 1))
    lead = np.matmul(rows.weights[by], across).reshape(len(rival), sy * sx)
    # Only rivals that beat the candidate somewhere in their block matter (usually one).
    keep = lead.max(axis=1) > 0
    by, bx, rival, lead = by[keep], bx[keep], rival[keep], lead[keep]
    if len(rival) == 0:
        return blocks
    first = np.r_[True, (by[1:] != by[:-1]) | (bx[1:] != bx[:-1])]
    starts = np.flatnonzero(first)
    owner = np.cumsum(first) - 1
    rank = np.arange(len(rival)) - starts[owner]
    # Per pixel, the rival with the largest positive lead wins; else the candidate.
    top = np.zeros((len(starts), sy * sx), np.float32)
    labels = np.repeat(best[by[starts], bx[starts]].astype(dtype)[:, None], sy * sx, 1)
    for r in range(int(rank.max()) + 1):
        pick = np.flatnonzero(rank == r)
        cells, lead_r = owner[pick], lead[pick]
        better = lead_r > top[cells]
        top[cells] = np.where(better, lead_r, top[cells])
        labels[cells] = np.where(better, rival[pick, None].astype(dtype), labels[cells])
    blocks[by[starts], :, bx[starts], :] = labels.reshape(-1, sy, sx)
    return blocks
