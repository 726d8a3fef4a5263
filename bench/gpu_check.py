#!/usr/bin/env python3
"""The GPU check: everything this machine's GPU offers, in one command, into one JSON.

Usage::

    .venv/bin/python bench/gpu_check.py                       # writes gpu_check.json
    .venv/bin/python bench/gpu_check.py --out /tmp/gpu.json --runs 30

Runs, each only where the machine offers it (what is skipped, and why, goes into the JSON):

* **torch CUDA**, B0 (official weights from ``$EVIT_ROS_WEIGHTS_DIR`` or the cache) at
  512x1024 and 1024x2048: fp32 and fp16 parity with PyTorch fp32 on the CPU (max |dlogit|,
  argmax agreement) and latency (median / p90 of ``--runs`` after warm-up, synchronised).
* **onnxruntime CUDA** (onnxruntime-gpu installed): the fp32 export on the CUDA provider,
  parity with the same graph on the CPU provider, latency.
* **TensorRT** (installed, 8.5 / 8.6 / 10.x / 11.x): for fp32, fp16 and int8 (int8 only with
  calibration frames: ``--calib``, else ``../shared/data/frames``): the build (seconds, engine
  size, typing), parity with the CPU artifact (TensorRT >= 10: the very ONNX artifact the
  engine was compiled from, run by onnxruntime on the CPU; 8.x: PyTorch fp32 on the CPU),
  and latency of one inference (host-to-device copy, engine, copy back).

Inputs are real frames when ``../shared/data/frames/city_2048x1024.png`` exists (else a fixed
random input). The whole check is bounded to about 5 minutes: ``--budget-s`` (default 270)
stops starting new parts once spent, and says so. Without a CUDA GPU it writes a JSON that
says what was skipped and why, and exits 0.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get('EVIT_ROS_SHARED', REPO.parent / 'shared'))
MODEL = 'b0-cityscapes'
SIZES = ((512, 1024), (1024, 2048))
PRECISIONS = ('fp32', 'fp16', 'int8')


class Budget:
    """Seconds left for the whole check; parts not started once it is spent say so."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        """Return the seconds left (negative when spent)."""
        return self.end - time.monotonic()


def percentiles(samples_ms: List[float]) -> Dict[str, float]:
    """Return median and p90 of ``samples_ms``, rounded to 0.01 ms."""
    ordered = sorted(samples_ms)
    p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
    return {'median_ms': round(statistics.median(ordered), 2), 'p90_ms': round(p90, 2),
            'runs': len(ordered)}


def time_it(run: Callable[[], object], sync: Callable[[], None], runs: int,
            warmup: int = 5) -> Dict[str, float]:
    """Time ``run`` (synchronised with ``sync`` after each call) and return its percentiles."""
    for _ in range(warmup):
        run()
    sync()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        sync()
        samples.append((time.perf_counter() - start) * 1e3)
    return percentiles(samples)


def parity(logits: np.ndarray, reference: np.ndarray) -> Dict[str, float]:
    """Return max |dlogit|, finiteness and argmax agreement of ``logits`` with ``reference``."""
    logits = np.asarray(logits, np.float32)
    reference = np.asarray(reference, np.float32)
    finite = bool(np.isfinite(logits).all())
    diff = float(np.abs(logits - reference).max()) if finite else float('inf')
    agreement = float(np.mean(logits.argmax(1) == reference.argmax(1)))
    return {'finite': finite, 'max_abs_dlogit': round(diff, 5),
            'argmax_agreement': round(agreement, 5)}


def network_input(size: Tuple[int, int]) -> Tuple[np.ndarray, str]:
    """Return a preprocessed ``1x3xHxW`` input (a real frame when the shared data exist)."""
    from evit_ros.runtime.preprocess import preprocess
    frame = SHARED / 'data' / 'frames' / 'city_2048x1024.png'
    if frame.is_file():
        import cv2
        rgb = cv2.cvtColor(cv2.imread(str(frame)), cv2.COLOR_BGR2RGB)
        return preprocess(rgb, size), str(frame)
    rgb = np.random.default_rng(0).integers(0, 256, (size[0], size[1], 3), dtype=np.uint8)
    return preprocess(rgb, size), 'random (seed 0)'


def cuda_status() -> Tuple[bool, str]:
    """Return whether torch sees a CUDA GPU, and its name or why not."""
    try:
        import torch
    except ImportError as exc:
        return False, f'torch does not import ({exc})'
    if not torch.cuda.is_available():
        return False, 'no CUDA GPU (torch.cuda.is_available() is False)'
    return True, torch.cuda.get_device_name(0)


def tensorrt_status() -> Tuple[Optional[str], str]:
    """Return TensorRT's version (``None`` when unusable) and why not."""
    from evit_ros.runtime.backends.tensorrt_backend import import_tensorrt
    from evit_ros.runtime.backends import BackendUnavailable
    try:
        return str(import_tensorrt().__version__), ''
    except BackendUnavailable as exc:
        return None, str(exc)


def ort_cuda_status() -> Tuple[bool, str]:
    """Return whether onnxruntime offers the CUDA provider, and why not."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return False, f'onnxruntime is not installed ({exc})'
    providers = ort.get_available_providers()
    if 'CUDAExecutionProvider' not in providers:
        return False, ('onnxruntime has no CUDA provider (providers: '
                       f'{", ".join(providers)}; install onnxruntime-gpu)')
    return True, ''


def per_size(sizes, budget: Budget, check: Callable[[Tuple[int, int]], Dict[str, object]]
             ) -> Dict[str, object]:
    """Run ``check(size)`` for each network size while the time budget lasts."""
    results: Dict[str, object] = {}
    for size in sizes:
        name = f'{size[0]}x{size[1]}'
        results[name] = (check(size) if budget.left() >= 30
                         else {'skipped': 'time budget spent'})
    return results


def check_torch(model, sizes, runs: int, budget: Budget) -> Dict[str, object]:
    """PyTorch on CUDA, fp32 and fp16, against PyTorch fp32 on the CPU."""
    import torch
    from evit_ros.runtime.backends.torch_backend import TorchBackend

    def one(size):
        x, source = network_input(size)
        reference = TorchBackend(model, size).infer(x).numpy()
        entry: Dict[str, object] = {'input': source}
        for precision in ('fp32', 'fp16'):
            backend = TorchBackend(model, size, device='cuda', precision=precision)
            logits = backend.infer(x).cpu().numpy()
            entry[precision] = {**parity(logits, reference),
                                **time_it(lambda: backend.infer(x), torch.cuda.synchronize,
                                          runs)}
            backend = None  # free its GPU copy of the weights before the next precision
            torch.cuda.empty_cache()
        return entry
    return per_size(sizes, budget, one)


def check_onnxruntime(model, sizes, runs: int, budget: Budget) -> Dict[str, object]:
    """onnxruntime on CUDA against the same exported graph on the CPU."""
    from evit_ros.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

    def one(size):
        x, source = network_input(size)
        reference = OnnxRuntimeBackend(model, size, device='cpu').infer(x).numpy()
        gpu = OnnxRuntimeBackend(model, size, device='cuda')
        logits = gpu.infer(x).numpy()
        return {'input': source, 'fp32': {
            **parity(logits, reference), **time_it(lambda: gpu.infer(x), lambda: None, runs)}}
    return per_size(sizes, budget, one)


def check_tensorrt(model, sizes, runs: int, budget: Budget, calib: Optional[str],
                   engine_dir: Path) -> Dict[str, object]:
    """Each precision: build, parity with the CPU artifact (or PyTorch on 8.x), latency."""
    from evit_ros.model import get_entry
    from evit_ros.runtime.backends.tensorrt_backend import TensorRTBackend
    from evit_ros.runtime.backends.torch_backend import TorchBackend
    results: Dict[str, object] = {}
    entry = get_entry(MODEL)
    for size in sizes:
        name = f'{size[0]}x{size[1]}'
        x, source = network_input(size)
        torch_reference = TorchBackend(model, size).infer(x).numpy()
        part: Dict[str, object] = {'input': source}
        for precision in PRECISIONS:
            if budget.left() < 45:
                part[precision] = {'skipped': 'time budget spent'}
                continue
            if precision == 'int8' and not calib:
                part[precision] = {'skipped': 'no calibration frames (--calib, or '
                                              '../shared/data/frames)'}
                continue
            start = time.monotonic()
            try:
                backend = TensorRTBackend(
                    model, size, device='cuda', precision=precision, engine_dir=str(engine_dir),
                    calib=calib if precision == 'int8' else None, calib_images=40,
                    entry=entry, weights='official')
            except Exception as exc:  # report the failure of this part, keep checking
                part[precision] = {'error': f'{type(exc).__name__}: {exc}'}
                continue
            build_s = time.monotonic() - start
            logits = backend.infer(x).numpy()
            typing = backend._builder.typing
            artifact = backend.cache.artifact_path(backend.key)
            if typing == 'strong' and artifact.is_file():
                import onnxruntime as ort
                session = ort.InferenceSession(str(artifact), providers=['CPUExecutionProvider'])
                reference = session.run(None, {session.get_inputs()[0].name: x})[0]
                against = f'CPU artifact {artifact.name} (onnxruntime)'
            else:
                reference, against = torch_reference, 'PyTorch fp32 on the CPU'
            part[precision] = {
                'build_s': round(build_s, 1), 'typing': typing,
                'engine_mb': round(backend.engine_path.stat().st_size / 1e6, 2),
                'parity_against': against, **parity(logits, reference),
                'vs_torch_fp32': parity(logits, torch_reference),
                **time_it(lambda: backend.infer(x), lambda: None, runs)}
            backend.close()
        results[name] = part
    return results


def default_calib() -> Optional[str]:
    """Return a folder of real frames for int8 calibration, when the shared data exist."""
    for candidate in (SHARED / 'data' / 'frames', SHARED / 'data' / 'camvid' / 'val'):
        if candidate.is_dir():
            return str(candidate)
    return None


def run_check(args) -> Dict[str, object]:
    """Run every part this machine offers and return the report."""
    budget = Budget(args.budget_s)
    report: Dict[str, object] = {
        'command': ' '.join(['bench/gpu_check.py'] + sys.argv[1:]),
        'started_at': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
        'host': platform.node(), 'machine': platform.machine(),
        'python': platform.python_version(), 'model': MODEL,
        'sizes': [f'{h}x{w}' for h, w in args.sizes], 'runs': args.runs,
    }
    have_cuda, gpu = cuda_status()
    trt_version, trt_reason = tensorrt_status()
    ort_cuda, ort_reason = ort_cuda_status()
    report['gpu'] = gpu if have_cuda else None
    report['tensorrt_version'] = trt_version
    if not have_cuda:
        report['torch_cuda'] = {'skipped': gpu}
        report['onnxruntime_cuda'] = {'skipped': gpu if ort_cuda else ort_reason}
        report['tensorrt'] = {'skipped': trt_reason or gpu}
        return report
    import torch
    from evit_ros.model import create_model
    report['torch'] = torch.__version__
    model = create_model(MODEL, weights='official')
    parts = [('torch_cuda', lambda: check_torch(model, args.sizes, args.runs, budget), ''),
             ('onnxruntime_cuda',
              lambda: check_onnxruntime(model, args.sizes, args.runs, budget), ort_reason),
             ('tensorrt', lambda: check_tensorrt(model, args.sizes, args.runs, budget,
                                                 args.calib or default_calib(),
                                                 Path(args.engine_dir)), trt_reason)]
    for name, part, unavailable in parts:
        if unavailable:
            report[name] = {'skipped': unavailable}
            continue
        start = time.monotonic()
        try:
            report[name] = part()
        except Exception as exc:  # one broken part must not lose the others
            report[name] = {'error': f'{type(exc).__name__}: {exc}',
                            'traceback': traceback.format_exc(limit=5)}
        report[f'{name}_seconds'] = round(time.monotonic() - start, 1)
    return report


def parse_size(text: str) -> Tuple[int, int]:
    """Parse ``HxW``."""
    height, width = text.lower().split('x')
    return int(height), int(width)


def main(argv=None) -> int:
    """Run the check and write the JSON; exit 0 also when there is no GPU."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', default='gpu_check.json', help='JSON report path')
    parser.add_argument('--runs', type=int, default=20, help='timed runs per measurement')
    parser.add_argument('--sizes', type=parse_size, nargs='+', default=list(SIZES),
                        help='network sizes HxW (default 512x1024 1024x2048)')
    parser.add_argument('--calib', help='int8 calibration frames (folder or bag)')
    parser.add_argument('--budget-s', type=float, default=270.0,
                        help='stop starting new parts after this many seconds')
    parser.add_argument('--engine-dir', default=None,
                        help='engine folder (default a fresh temporary one)')
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix='evit_ros_gpu_check_') as tmp:
        args.engine_dir = args.engine_dir or tmp
        report = run_check(args)
    out = Path(args.out)
    out.write_text(json.dumps(report, indent=2) + '\n')
    skipped = [name for name in ('torch_cuda', 'onnxruntime_cuda', 'tensorrt')
               if isinstance(report.get(name), dict) and 'skipped' in report[name]]
    print(f'wrote {out}' + (f' (skipped: {", ".join(skipped)})' if skipped else ''))
    return 0


if __name__ == '__main__':
    sys.exit(main())
