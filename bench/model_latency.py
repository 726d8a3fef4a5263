#!/usr/bin/env python3
"""CPU latency, parameters and MACs of the EfficientViT-Seg models, eager vs BatchNorm-folded.

Usage::

    .venv/bin/python bench/model_latency.py                      # B0 and B1 Cityscapes
    .venv/bin/python bench/model_latency.py --all --runs 10      # every Cityscapes model
    .venv/bin/python bench/model_latency.py --json results.json

Latency: PyTorch eager, fp32, ``torch.inference_mode``, batch 1, random input (the network's
cost does not depend on the pixels), ``--threads`` intra-op threads (default 2). Each size
is warmed up, then eager and folded runs alternate so that load from other processes hits
both alike; the median of ``--runs`` runs is reported with the 10th and 90th percentiles.
MACs: every Conv2d (hooked) plus every matmul (the attention), counted at the given size.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Dict, List, Tuple

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from evit_ros.model import create_model, fold_batchnorm, get_entry

DEFAULT_MODELS = ('b0-cityscapes', 'b1-cityscapes')
ALL_CITYSCAPES = ('b0-cityscapes', 'b1-cityscapes', 'b2-cityscapes', 'b3-cityscapes',
                  'l1-cityscapes', 'l2-cityscapes')
DEFAULT_SIZES = ((512, 1024), (1024, 2048))

# MACs (G) published with the release at 1024x2048 (docs/efficientvit.md).
PUBLISHED_GMACS = {'b0-cityscapes': 4.39, 'b1-cityscapes': 25.1, 'b2-cityscapes': 73.6,
                   'b3-cityscapes': 179.0, 'l1-cityscapes': 282.0, 'l2-cityscapes': 396.0}
MATMULS = (torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.bmm)


class _MatmulCounter(TorchFunctionMode):
    """Count the multiply-accumulates of every matmul run inside the mode."""

    def __init__(self):
        super().__init__()
        self.macs = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in MATMULS:
            self.macs += out.numel() * args[0].shape[-1]
        return out


def count_macs(model: nn.Module, size: Tuple[int, int]) -> Dict[str, int]:
    """Return conv and matmul MACs of one forward pass at ``size`` (batch 1)."""
    conv = [0]

    def on_conv(module, args, out):
        kh, kw = module.kernel_size
        conv[0] += out.numel() * (module.in_channels // module.groups) * kh * kw

    handles = [m.register_forward_hook(on_conv) for m in model.modules()
               if isinstance(m, nn.Conv2d)]
    counter = _MatmulCounter()
    try:
        with torch.inference_mode(), counter:
            model(torch.zeros(1, 3, *size))
    finally:
        for handle in handles:
            handle.remove()
    return {'conv': conv[0], 'matmul': counter.macs, 'total': conv[0] + counter.macs}


def time_pair(models: Dict[str, nn.Module], size: Tuple[int, int], runs: int,
              warmup: int) -> Dict[str, List[float]]:
    """Time the given models on one input, alternating them run by run; return ms lists."""
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0))
    times: Dict[str, List[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for _ in range(warmup):
            for model in models.values():
                model(x)
        for _ in range(runs):
            for name, model in models.items():
                start = time.perf_counter()
                model(x)
                times[name].append((time.perf_counter() - start) * 1e3)
    return times


def summary(samples: List[float]) -> Dict[str, float]:
    """Median and spread of a list of milliseconds."""
    return {'median_ms': statistics.median(samples),
            'min_ms': min(samples),
            'p10_ms': float(np.percentile(samples, 10)),
            'p90_ms': float(np.percentile(samples, 90)),
            'runs': len(samples)}


def cpu_name() -> str:
    """Return the CPU model name (Linux), else what platform knows."""
    try:
        with open('/proc/cpuinfo') as handle:
            for line in handle:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(threads: int) -> Dict[str, object]:
    """Describe the machine and the libraries that produced the numbers."""
    return {
        'cpu': cpu_name(),
        'logical_cpus': os.cpu_count(),
        'torch_threads': threads,
        'load_average': os.getloadavg() if hasattr(os, 'getloadavg') else None,
        'python': platform.python_version(),
        'platform': platform.platform(),
        'torch': torch.__version__,
        'numpy': np.__version__,
        'onednn': _config_line('MKL-DNN') or torch.backends.mkldnn.is_available(),
        'cpu_capability': _config_line('CPU capability usage'),
        'parallel_backend': _config_line('ATen parallel backend', torch.__config__.parallel_info),
    }


def _config_line(marker: str, source=torch.__config__.show) -> str:
    """Return the first line of torch's build description that mentions ``marker``."""
    for line in source().splitlines():
        if marker in line:
            return line.strip(' -').split(': ', 1)[-1] if ': ' in line else line.strip(' -')
    return ''


def parse_size(text: str) -> Tuple[int, int]:
    """Parse ``HxW``."""
    try:
        height, width = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'size must look like 512x1024, got {text!r}')
    return height, width


def main(argv=None) -> int:
    """Run the benchmark and print a markdown table; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--models', nargs='+', default=list(DEFAULT_MODELS),
                        help='registry names (default: b0-cityscapes b1-cityscapes)')
    parser.add_argument('--all', action='store_true',
                        help='every Cityscapes model, B0 to L2 (slow: minutes per model)')
    parser.add_argument('--sizes', nargs='+', type=parse_size, default=list(DEFAULT_SIZES),
                        help='network sizes HxW (default: 512x1024 1024x2048)')
    parser.add_argument('--runs', type=int, default=20, help='timed runs per size (>= 1)')
    parser.add_argument('--warmup', type=int, default=3, help='untimed runs first')
    parser.add_argument('--threads', type=int, default=2, help='torch intra-op threads')
    parser.add_argument('--json', metavar='FILE', help='also write the results as JSON')
    args = parser.parse_args(argv)
    if args.runs < 1 or args.threads < 1 or args.warmup < 0:
        parser.error('--runs and --threads must be >= 1, --warmup >= 0')
    names = list(ALL_CITYSCAPES) if args.all else args.models
    try:
        entries = [get_entry(name) for name in names]
    except KeyError as exc:
        parser.error(str(exc))

    torch.set_num_threads(args.threads)
    env = environment(args.threads)
    print('# model latency (PyTorch eager, fp32, CPU, batch 1)')
    for key, value in env.items():
        print(f'- {key}: {value}')
    print(f'- runs: {args.runs} timed after {args.warmup} warm-up, eager/folded alternating\n')

    results = []
    header = ('| model | params | input | GMACs (conv+matmul) | published GMACs | eager ms '
              '(p10-p90) | folded ms (p10-p90) | folded speed-up |')
    print(header)
    print('|' + '---|' * 8)
    for entry in entries:
        model = create_model(entry.name)
        folded = fold_batchnorm(model)
        params = sum(p.numel() for p in model.parameters())
        for size in args.sizes:
            macs = count_macs(model, size)
            times = time_pair({'eager': model, 'folded': folded}, size, args.runs,
                              args.warmup)
            eager, fused = summary(times['eager']), summary(times['folded'])
            published = (PUBLISHED_GMACS.get(entry.name)
                         if tuple(size) == (1024, 2048) else None)
            row = {'model': entry.name, 'params': params, 'input': list(size),
                   'macs': macs, 'published_gmacs': published, 'eager': eager,
                   'folded': fused}
            results.append(row)
            print(f'| {entry.name} | {params / 1e6:.2f}M | {size[0]}x{size[1]} | '
                  f'{macs["total"] / 1e9:.2f} | {published if published else "-"} | '
                  f'{eager["median_ms"]:.0f} ({eager["p10_ms"]:.0f}-{eager["p90_ms"]:.0f}) | '
                  f'{fused["median_ms"]:.0f} ({fused["p10_ms"]:.0f}-{fused["p90_ms"]:.0f}) | '
                  f'{eager["median_ms"] / fused["median_ms"]:.2f}x |', flush=True)
        del model, folded
    env['load_average_end'] = os.getloadavg() if hasattr(os, 'getloadavg') else None
    print(f'\n- load average at the end: {env["load_average_end"]}')
    if args.json:
        with open(args.json, 'w') as handle:
            json.dump({'environment': env, 'results': results}, handle, indent=2)
        print(f'- wrote {args.json}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
