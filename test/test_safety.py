"""Security rules of the package, checked statically over every module, plus private folders.

Static (``ast``) rules, each shown to catch what it forbids on a small bad snippet:

* no ``shell=True``, no ``os.system`` / ``os.popen`` / ``subprocess.getoutput``, no
  ``subprocess`` call whose command is a string (built or literal): argument lists only;
* every ``torch.load`` passes ``weights_only=True``;
* no ``pickle`` / ``marshal`` / ``dill`` loading, no ``yaml.load`` without a safe loader
  (``yaml.safe_load`` is the way), no builtin ``eval`` / ``exec``;
* URLs in the code are HTTPS (plain http only to loopback).

Downloads themselves (HTTPS only, size-bounded, sha256-checked before use, written
atomically) are exercised against a real local server in ``test_weights.py``; start-up
refusals of bad weights and engine paths in ``test_node_faults.py``.
"""

import ast
import os
import re
import stat
from pathlib import Path
from typing import List

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / 'evit_ros'
SUBPROCESS_CALLS = {'Popen', 'run', 'call', 'check_call', 'check_output'}
FORBIDDEN_CALLS = {('os', 'system'), ('os', 'popen'), ('subprocess', 'getoutput'),
                   ('subprocess', 'getstatusoutput'), ('pickle', 'load'), ('pickle', 'loads'),
                   ('pickle', 'Unpickler'), ('marshal', 'load'), ('marshal', 'loads'),
                   ('dill', 'load'), ('dill', 'loads'), ('yaml', 'unsafe_load'),
                   ('yaml', 'full_load'), ('yaml', 'load_all')}
SAFE_YAML_LOADERS = {'SafeLoader', 'CSafeLoader', 'BaseLoader'}
URL = re.compile(r'\bhttp://(?!(localhost|127\.0\.0\.1|\[::1\])[:/])[^\s\'"]+')


def _dotted(node: ast.AST) -> str:
    """Return ``a.b.c`` for a name or attribute chain, ``''`` otherwise."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return '.'.join(reversed(parts))
    return ''


def _is_string_command(node: ast.AST) -> bool:
    """Whether an argument is a string: a literal, an f-string, ``%`` / ``+`` / ``.format``."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    if isinstance(node, ast.JoinedStr):
        return True
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Mod, ast.Add)):
        return _is_string_command(node.left) or _is_string_command(node.right)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        return node.func.attr in ('format', 'join') and _is_string_command(node.func.value)
    return False


def _keyword(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def violations(source: str, filename: str = '<snippet>') -> List[str]:
    """Return ``file:line: rule`` for each rule broken in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and URL.search(node.value):
            found.append(f'{filename}:{node.lineno}: plain http URL')
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        parts = tuple(name.split('.'))
        where = f'{filename}:{node.lineno}'
        shell = _keyword(node, 'shell')
        if shell is not None and not (isinstance(shell, ast.Constant) and shell.value is False):
            found.append(f'{where}: shell= other than False')
        if parts[-2:] in FORBIDDEN_CALLS:
            found.append(f'{where}: {name}')
        if name in ('eval', 'exec'):
            found.append(f'{where}: builtin {name}')
        if len(parts) >= 2 and parts[-2] == 'subprocess' and parts[-1] in SUBPROCESS_CALLS:
            command = node.args[0] if node.args else _keyword(node, 'args')
            if command is not None and _is_string_command(command):
                found.append(f'{where}: subprocess.{parts[-1]} with a string command')
        if parts[-2:] == ('torch', 'load'):
            safe = _keyword(node, 'weights_only')
            if not (isinstance(safe, ast.Constant) and safe.value is True):
                found.append(f'{where}: torch.load without weights_only=True')
        if parts[-2:] == ('yaml', 'load'):
            loader = _keyword(node, 'Loader')
            if loader is None and len(node.args) > 1:
                loader = node.args[1]
            if loader is None or _dotted(loader).split('.')[-1] not in SAFE_YAML_LOADERS:
                found.append(f'{where}: yaml.load without a safe Loader')
    return found


def test_the_package_breaks_no_rule():
    modules = sorted(PACKAGE.rglob('*.py'))
    assert len(modules) > 30
    found = []
    for path in modules:
        found += violations(path.read_text(), str(path.relative_to(PACKAGE.parent)))
    assert found == []


BAD = '''
import os, subprocess, pickle, yaml, torch, marshal
os.system('ls')
subprocess.run('ls -l', shell=True)
subprocess.Popen(f'convert {name}')
subprocess.check_output('ls ' + folder)
subprocess.call(['ls'], shell=flag)
torch.load(path)
torch.load(path, weights_only=False)
pickle.loads(data)
marshal.load(handle)
yaml.load(text)
yaml.load(text, Loader=yaml.Loader)
eval(expression)
URL = 'http://example.com/b0.pt'
'''
GOOD = '''
import subprocess, torch, yaml
subprocess.run(['ls', '-l'], check=True)
subprocess.Popen(args, shell=False)
torch.load(path, map_location='cpu', weights_only=True)
yaml.safe_load(text)
yaml.load(text, Loader=yaml.SafeLoader)
model.eval()
LOCAL = 'http://127.0.0.1:8000/b0.pt'
REMOTE = 'https://huggingface.co/han-cai/efficientvit-seg/b0.pt'
'''


def test_the_scanner_catches_each_rule_and_passes_safe_code():
    found = violations(BAD)
    assert [line.split(': ', 1)[1] for line in found] == [
        'os.system', 'shell= other than False', 'subprocess.run with a string command',
        'subprocess.Popen with a string command', 'subprocess.check_output with a string '
        'command', 'shell= other than False', 'torch.load without weights_only=True',
        'torch.load without weights_only=True', 'pickle.loads', 'marshal.load',
        'yaml.load without a safe Loader', 'yaml.load without a safe Loader', 'builtin eval',
        'plain http URL'], found
    assert violations(GOOD) == []


def _private(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) & 0o077 == 0


@pytest.mark.parametrize('kind', ['weights_cache', 'engine_dir', 'onnx_cache'])
def test_cache_and_engine_folders_are_created_user_only(kind, tmp_path, monkeypatch):
    monkeypatch.setenv('EVIT_ROS_CACHE', str(tmp_path / 'cache'))
    old = os.umask(0o022)
    try:
        if kind == 'weights_cache':
            from evit_ros.weights import ensure_cache_dir
            folder = ensure_cache_dir()
        elif kind == 'engine_dir':
            from evit_ros.runtime.engine_cache import prepare_engine_dir
            folder = prepare_engine_dir(tmp_path / 'engines' / 'b0')
        else:
            from evit_ros.runtime import Segmenter
            from evit_ros.runtime.backends.onnxruntime_backend import cache_root
            segmenter = Segmenter('b0-cityscapes', backend='onnxruntime', weights=None,
                                  input_size=(32, 64))
            assert segmenter.backend.path.parent == cache_root()
            assert segmenter.backend.path.is_file()
            folder = cache_root()
    finally:
        os.umask(old)
    assert folder.is_dir()
    assert _private(folder), oct(folder.stat().st_mode)
