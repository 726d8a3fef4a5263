"""Check the CPU fallback on aarch64 under emulation: same frames, same label maps as x86.

One command, run as root on an x86_64 Debian/Ubuntu machine with network to Debian and
PyPI only::

    python bench/arm64/check_arm64.py            # exit 0: every label map agrees >= 99.9 %

It (1) installs ``qemu-user-static`` and ``debootstrap`` with apt-get when missing,
(2) unpacks an arm64 Debian root file system holding Debian's own Python into the cache
(first stage of ``debootstrap --foreign`` plus ``dpkg-deb -x``: nothing arm64 has to run
to build it, so binfmt_misc is not needed), (3) installs the runtime layer's aarch64 wheels
from PyPI into it with the host's pip (``--platform``/``--target``, no emulated pip),
(4) runs ``segment_frames.py`` with this interpreter (x86 reference) and with the arm64
interpreter under ``qemu-aarch64-static -L <rootfs>``, and (5) compares the saved label
maps pixel by pixel, writing ``summary.json``.

Everything downloaded is kept in the cache (default ``.arm64/`` in the repository, or
``$EVIT_ROS_ARM64_CACHE``), so a second run only segments and compares.
Exit codes: 0 agreement met, 1 agreement missed (or nothing compared), 2 the arm64
environment could not be set up (the message says which step and why).
"""

import argparse
import json
import os
from pathlib import Path
import platform
import shutil
import subprocess
import sys
import time

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
WORKER = HERE / 'segment_frames.py'

SUITE = 'bookworm'            # Debian 12: Python 3.11, glibc 2.36 (manylinux_2_28 wheels run)
PYTHON_VERSION = '3.11'
MIRROR = os.environ.get('EVIT_ROS_DEBIAN_MIRROR', 'http://deb.debian.org/debian')
THRESHOLD = 0.999

# aarch64 wheels of what the runtime layer imports (evit_ros.model, evit_ros.runtime, the
# ONNX Runtime backend), with --no-deps so that pip cannot pull x86-only CUDA extras.
COMMON_WHEELS = (
    'filelock==4.3.1', 'typing-extensions==4.16.0', 'sympy==1.14.0', 'mpmath==1.3.0',
    'networkx==3.6.1', 'jinja2==3.1.6', 'markupsafe==3.0.4', 'fsspec==2026.9.0',
    'numpy==2.4.6', 'opencv-python-headless==4.14.0.94', 'pyyaml==6.0.3',
    'onnxruntime==1.32.0', 'flatbuffers==25.12.19', 'packaging==26.4', 'protobuf==7.36.2',
    'onnx==1.23.2', 'ml-dtypes==0.6.0',
)
PLATFORMS = ('manylinux_2_28_aarch64', 'manylinux_2_27_aarch64', 'manylinux_2_26_aarch64',
             'manylinux_2_17_aarch64', 'manylinux2014_aarch64')

# Emulated CPU -> (MIDR_EL1, /proc/cpuinfo Features, newest PyPI torch that runs on it).
# PyPI's aarch64 torch: 2.10.0 is the last CPU-only build (>= 2.11 is a CUDA 13 build that
# requires NVIDIA's CUDA wheels) and dies with SIGILL on ARMv8.0 cores without LSE atomics
# (Raspberry Pi 4's Cortex-A72, Jetson Nano's Cortex-A57; pytorch/pytorch#176993);
# 2.9.1 runs on them.
ARMV80 = 'fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid'
ARMV82 = ARMV80 + ' atomics fphp asimdhp asimdrdm lrcpc dcpop asimddp'
CPUS = {
    'cortex-a53': (0x410FD034, ARMV80, '2.9.1'),
    'cortex-a57': (0x411FD071, ARMV80, '2.9.1'),
    'cortex-a72': (0x410FD083, ARMV80, '2.9.1'),
    'cortex-a76': (0x414FD0B1, ARMV82, '2.10.0'),
    'neoverse-n1': (0x414FD0C1, ARMV82, '2.10.0'),
    'max': (0x414FD0B1, ARMV82, '2.10.0'),
}


class SetupError(RuntimeError):
    """The arm64 environment could not be built; the message names the step."""


def run(command, step: str, **kwargs) -> subprocess.CompletedProcess:
    """Run ``command`` (a list), raising :class:`SetupError` naming ``step`` on failure."""
    try:
        result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    except OSError as error:
        raise SetupError(f'{step}: cannot run {command[0]}: {error}') from None
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-5:]
        raise SetupError(f'{step} failed (exit {result.returncode}): ' + ' | '.join(tail))
    return result


def ensure_tools() -> str:
    """Return the path of qemu-aarch64-static, installing it and debootstrap if needed."""
    packages = [name for name, tool in (('qemu-user-static', 'qemu-aarch64-static'),
                                        ('debootstrap', 'debootstrap'))
                if not shutil.which(tool)]
    if packages:
        if os.geteuid() != 0 or not shutil.which('apt-get'):
            raise SetupError(f'need {" and ".join(packages)}: run as root on Debian/Ubuntu '
                             f'or `apt-get install {" ".join(packages)}` first')
        env = dict(os.environ, DEBIAN_FRONTEND='noninteractive')
        install = ['apt-get', 'install', '-y', '-q', '--no-install-recommends', *packages]
        if subprocess.run(install, capture_output=True, env=env).returncode != 0:
            run(['apt-get', 'update', '-q'], 'apt-get update', env=env)
            run(install, f'apt-get install {" ".join(packages)}', env=env)
    qemu = shutil.which('qemu-aarch64-static')
    if not qemu:
        raise SetupError('qemu-aarch64-static is still missing after installing '
                         'qemu-user-static')
    return qemu


def build_rootfs(cache: Path) -> Path:
    """Unpack an arm64 Debian with Python into ``cache/rootfs`` (once); return its path."""
    rootfs = cache / 'rootfs'
    marker = rootfs / '.evit_ros_rootfs'
    if marker.is_file() and marker.read_text().strip() == SUITE:
        return rootfs
    if os.geteuid() != 0:
        raise SetupError('debootstrap needs root to unpack the arm64 root file system')
    shutil.rmtree(rootfs, ignore_errors=True)
    cache.mkdir(parents=True, exist_ok=True)
    run(['debootstrap', '--foreign', '--arch=arm64', '--variant=minbase',
         '--include=python3', SUITE, str(rootfs), MIRROR], 'debootstrap (arm64 first stage)')
    # The first stage unpacks only the "required" set; python3 waits for a second stage,
    # which would run arm64 maintainer scripts. Unpacking is all a sysroot needs.
    archives = rootfs / 'var' / 'cache' / 'apt' / 'archives'
    for deb in sorted(archives.glob('*.deb')):
        run(['dpkg-deb', '-x', str(deb), str(rootfs)], f'unpacking {deb.name}')
        deb.unlink()
    marker.write_text(SUITE + '\n')
    return rootfs


def pip_target(target: Path, wheels, step: str) -> Path:
    """Install ``wheels`` (aarch64, cp3.11) into ``target`` once; return ``target``."""
    marker = target / '.evit_ros_wheels'
    wanted = '\n'.join(wheels) + '\n'
    if marker.is_file() and marker.read_text() == wanted:
        return target
    shutil.rmtree(target, ignore_errors=True)
    command = [sys.executable, '-m', 'pip', 'install', '-q', '--disable-pip-version-check',
               '--no-deps', '--only-binary=:all:', '--target', str(target),
               '--python-version', PYTHON_VERSION, '--implementation', 'cp',
               '--abi', 'cp' + PYTHON_VERSION.replace('.', '')]
    for tag in PLATFORMS:
        command += ['--platform', tag]
    run(command + list(wheels), step)
    marker.write_text(wanted)
    return target


def install_wheels(cache: Path, torch_version: str):
    """Install the pinned aarch64 wheels (once); return the folders for PYTHONPATH."""
    tag = 'cp' + PYTHON_VERSION.replace('.', '')
    torch_dir = pip_target(cache / f'site-{tag}' / f'torch-{torch_version}',
                           [f'torch=={torch_version}'], f'pip install of aarch64 torch '
                           f'{torch_version}')
    common = pip_target(cache / f'site-{tag}' / 'common', COMMON_WHEELS,
                        'pip install of the aarch64 wheels')
    return [torch_dir, common]


def fake_cpu_files(rootfs: Path, cpu: str) -> None:
    """Give the emulated CPU an ARM ``/proc/cpuinfo`` and ``midr_el1`` inside the rootfs.

    qemu 7.2 passes the host's x86 /proc/cpuinfo through, which makes onnxruntime's CPU
    detection crash (SIGSEGV on import); with ``-L`` a file that exists in the rootfs is
    read instead. qemu >= 8.2 emulates the file itself. Features come from HWCAP anyway.
    """
    midr, features, _ = CPUS[cpu]
    count = os.cpu_count() or 1
    blocks = [f'processor\t: {n}\nBogoMIPS\t: 108.00\nFeatures\t: {features}\n'
              f'CPU implementer\t: 0x{midr >> 24:02x}\nCPU architecture: 8\n'
              f'CPU variant\t: 0x{(midr >> 20) & 0xF:x}\nCPU part\t: 0x{(midr >> 4) & 0xFFF:03x}\n'
              f'CPU revision\t: {midr & 0xF}\n' for n in range(count)]
    (rootfs / 'proc').mkdir(exist_ok=True)
    (rootfs / 'proc' / 'cpuinfo').write_text('\n'.join(blocks))
    for n in range(count):
        folder = rootfs / 'sys' / 'devices' / 'system' / 'cpu' / f'cpu{n}' / 'regs'
        (folder / 'identification').mkdir(parents=True, exist_ok=True)
        (folder / 'identification' / 'midr_el1').write_text(f'0x{midr:016x}\n')


def arm64_python(qemu: str, rootfs: Path, cpu: str):
    """Return the command prefix that runs the arm64 Python under user-mode emulation."""
    return [qemu, '-cpu', cpu, '-L', str(rootfs), str(rootfs / 'usr' / 'bin' / 'python3')]


def qemu_version(qemu: str) -> str:
    """Return qemu's one-line version."""
    return run([qemu, '--version'], 'qemu --version').stdout.splitlines()[0]


def segment(prefix, out: Path, env: dict, extra) -> float:
    """Run the worker with ``prefix`` (an interpreter command); return its wall seconds."""
    began = time.perf_counter()
    result = subprocess.run(prefix + [str(WORKER), '--out', str(out), *extra], env=env,
                            capture_output=True, text=True)
    (out.parent / f'{out.name}.log').write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-8:]
        raise RuntimeError(f'{" ".join(prefix[:1])} worker failed: ' + ' | '.join(tail))
    return time.perf_counter() - began


def compare(x86: Path, arm: Path) -> dict:
    """Compare the label maps (and logits) both runs saved; return the per-backend report."""
    import numpy as np
    manifests = [json.loads((folder / 'manifest.json').read_text()) for folder in (x86, arm)]
    report = {}
    for backend, here in manifests[0]['backends'].items():
        there = manifests[1]['backends'].get(backend, {'available': False, 'reason': 'not run'})
        if not (here['available'] and there['available']):
            report[backend] = {'compared': False, 'x86': here.get('reason', 'available'),
                               'arm64': there.get('reason', 'available')}
            continue
        frames, equal, total = [], 0, 0
        for frame in here['frames']:
            ours = np.load(x86 / f'{frame["name"]}.labels.npy')
            theirs = np.load(arm / f'{frame["name"]}.labels.npy')
            same = int((ours == theirs).sum()) if ours.shape == theirs.shape else 0
            diff = np.abs(np.load(x86 / f'{frame["name"]}.logits.npy')
                          - np.load(arm / f'{frame["name"]}.logits.npy'))
            frames.append({'name': frame['name'], 'pixels': int(ours.size),
                           'differing_pixels': int(ours.size - same),
                           'agreement': same / ours.size,
                           'logits_max_abs_diff': float(diff.max()),
                           'logits_mean_abs_diff': float(diff.mean())})
            equal, total = equal + same, total + ours.size
        report[backend] = {'compared': True, 'frames': frames, 'overall_agreement': equal / total,
                           'min_agreement': min(f['agreement'] for f in frames)}
    return report


def timing_summary(folder: Path) -> dict:
    """Return the import, build and per-frame timings one worker recorded."""
    manifest = json.loads((folder / 'manifest.json').read_text())
    summary = {'versions': manifest['versions'], 'import_s': manifest['import_s'],
               'process_s': manifest['process_s'], 'auto': manifest.get('auto'),
               'backends': {}}
    for backend, entry in manifest['backends'].items():
        if entry['available']:
            summary['backends'][backend] = {
                'build_s': entry['build_s'],
                'frames_ms': {f['name']: f['wall_ms'] for f in entry['frames']}}
    return summary


def main(argv=None) -> int:
    """Build (or reuse) the arm64 environment, segment on both, compare; return exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--cache', type=Path, default=Path(os.environ.get(
        'EVIT_ROS_ARM64_CACHE', REPO / '.arm64')), help='where the arm64 rootfs and wheels live')
    parser.add_argument('--out', type=Path, default=None,
                        help='results folder (default <cache>/out)')
    parser.add_argument('--cpu', default='cortex-a72', choices=sorted(CPUS),
                        help='emulated CPU: cortex-a72 (Raspberry Pi 4, ARMv8.0; default), '
                             'cortex-a57 (Jetson Nano), cortex-a76 (Raspberry Pi 5, ARMv8.2), '
                             'neoverse-n1, max')
    parser.add_argument('--torch', default=None,
                        help='aarch64 torch version from PyPI (default: the newest CPU build '
                             'that runs on --cpu: 2.9.1 on ARMv8.0, 2.10.0 on ARMv8.2)')
    parser.add_argument('--shared', type=Path, default=Path(os.environ.get(
        'EVIT_ROS_SHARED', REPO.parent / 'shared')).resolve(), help='shared reference folder')
    parser.add_argument('worker_args', nargs=argparse.REMAINDER,
                        help='after "--": passed to segment_frames.py (e.g. --large none)')
    args = parser.parse_args(argv)
    cache = args.cache.resolve()
    out = (args.out or cache / 'out').resolve()
    extra = [a for a in args.worker_args if a != '--']
    if platform.machine() != 'x86_64' or sys.platform != 'linux':
        print(f'SETUP: this check emulates aarch64 on x86_64 Linux; this is '
              f'{sys.platform}/{platform.machine()} (on ARM, run segment_frames.py natively)')
        return 2
    weights = Path(os.environ.get('EVIT_ROS_WEIGHTS_DIR', args.shared / 'weights'))
    for needed in (weights / 'efficientvit_seg_b0_cityscapes.pt', args.shared / 'data'):
        if not needed.exists():
            print(f'SETUP: needs {needed} (set EVIT_ROS_SHARED / EVIT_ROS_WEIGHTS_DIR)')
            return 2

    timings = {}
    began = time.perf_counter()
    try:
        qemu = ensure_tools()
        rootfs = build_rootfs(cache)
        torch_version = args.torch or CPUS[args.cpu][2]
        site = install_wheels(cache, torch_version)
        fake_cpu_files(rootfs, args.cpu)
        probe = run(arm64_python(qemu, rootfs, args.cpu)
                    + ['-c', 'import platform; print(platform.machine())'],
                    'running the arm64 Python under qemu').stdout.strip()
        if probe != 'aarch64':
            raise SetupError(f'the emulated Python reports machine {probe!r}, not aarch64')
    except SetupError as error:
        print(f'SETUP: {error}')
        return 2
    timings['setup_s'] = round(time.perf_counter() - began, 1)

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    base = {key: value for key, value in os.environ.items()
            if not key.startswith(('PYTHON', 'VIRTUAL_ENV', 'EVIT_ROS_'))}
    base.update(EVIT_ROS_SHARED=str(args.shared), EVIT_ROS_WEIGHTS_DIR=str(weights),
                PYTHONDONTWRITEBYTECODE='1', PYTHONNOUSERSITE='1')
    # Both runs import the package from this checkout; only the interpreter differs.
    x86_env = dict(base, PYTHONPATH=str(REPO), EVIT_ROS_CACHE=str(out / 'cache-x86'))
    arm_env = dict(base, PYTHONPATH=os.pathsep.join(str(p) for p in [*site, REPO]),
                   EVIT_ROS_CACHE=str(out / 'cache-arm64'), HOME=str(out / 'home-arm64'))
    try:
        timings['x86_s'] = round(segment([sys.executable], out / 'x86', x86_env, extra), 1)
        timings['arm64_s'] = round(segment(arm64_python(qemu, rootfs, args.cpu),
                                           out / 'arm64', arm_env, extra), 1)
    except RuntimeError as error:
        hint = ''
        if 'signal 4' in str(error):
            hint = (f'; torch {torch_version} uses instructions {args.cpu} lacks (LSE '
                    f'atomics need ARMv8.1+): try --torch 2.9.1')
        print(f'FAILED: {error}{hint} (logs in {out})')
        return 1

    report = compare(out / 'x86', out / 'arm64')
    compared = {name: entry for name, entry in report.items() if entry['compared']}
    passed = 'torch' in compared and all(
        entry['min_agreement'] >= THRESHOLD for entry in compared.values())
    summary = {'threshold': THRESHOLD, 'passed': passed, 'emulated_cpu': args.cpu,
               'qemu': qemu_version(qemu),
               'timings': timings, 'x86': timing_summary(out / 'x86'),
               'arm64': timing_summary(out / 'arm64'), 'agreement': report}
    (out / 'summary.json').write_text(json.dumps(summary, indent=1) + '\n')
    print(f'setup {timings["setup_s"]} s, x86 run {timings["x86_s"]} s, '
          f'emulated arm64 run {timings["arm64_s"]} s (qemu -cpu {args.cpu})')
    for backend, entry in report.items():
        if not entry['compared']:
            print(f'{backend}: not compared (x86: {entry["x86"]}; arm64: {entry["arm64"]})')
            continue
        print(f'{backend}: {len(entry["frames"])} label maps, overall agreement '
              f'{entry["overall_agreement"]:.5%}, lowest {entry["min_agreement"]:.5%}')
        for frame in entry['frames']:
            print(f'  {frame["name"]}: {frame["agreement"]:.5%} '
                  f'({frame["differing_pixels"]} of {frame["pixels"]} px differ, '
                  f'max |dlogit| {frame["logits_max_abs_diff"]:.2e})')
    for arch in ('x86', 'arm64'):
        if summary[arch]['auto']:
            print(f'backend "auto" on {arch}: {summary[arch]["auto"]["backend"]}')
    print(f'{"PASSED" if passed else "FAILED"}: threshold {THRESHOLD:.1%}; '
          f'summary in {out / "summary.json"}')
    return 0 if passed else 1


if __name__ == '__main__':
    sys.exit(main())
