"""The engine cache: keys, sidecar validation, rebuilds with one reason, private folder, CLI.

TensorRT cannot be installed on this machine (PyPI's tensorrt only redirects to NVIDIA's
index and there is no GPU), so every test here drives the cache with ``StandInBuilder``, a
stand-in for the TensorRT builder/deserialiser: the cache logic under test is the same.
"""

import dataclasses
import hashlib
import importlib.util
import json
import logging
import os
import stat
import threading

import pytest
import torch

from evit_ros.cli import main
from evit_ros.model import create_model, get_entry
from evit_ros.model.checkpoint import sha256_of
from evit_ros.runtime.engine_cache import (
    BuildHeartbeat, default_engine_dir, ENGINE_DIR_ENV, EngineCache, EngineCacheError,
    EngineKey, prepare_engine_dir, weights_sha256)

KEY = EngineKey(model='b0-cityscapes', weights_sha256='a' * 64, input_shape=(1, 3, 512, 1024),
                precision='fp16', calibration_sha256=None, tensorrt_version='10.3.0',
                gpu_name='Orin', compute_capability='8.7',
                build_settings=(('recipe', '2'), ('typing', 'strong')))


class StandInBuilder:
    """Stands in for TensorRT, which cannot exist on this machine: 'builds' deterministic
    bytes from the key and 'deserialises' by returning them (or raising when told to)."""

    def __init__(self):
        self.builds = []
        self.fail_deserialize = 0   # how many deserialisations raise before one succeeds

    def build(self, key):
        self.builds.append(key)
        return b'ENGINE:' + key.digest().encode() * 50

    def deserialize(self, data):
        if self.fail_deserialize:
            self.fail_deserialize -= 1
            raise RuntimeError('Serialization assertion failed: version tag mismatch')
        return bytes(data)


@pytest.fixture
def cache(tmp_path):
    return EngineCache(tmp_path / 'engines')


@pytest.fixture
def builder():
    return StandInBuilder()


def warnings_of(caplog):
    return [r.getMessage() for r in caplog.records
            if r.name == 'evit_ros.runtime' and r.levelno >= logging.WARNING]


def test_build_then_load_from_cache(cache, builder):
    first = cache.load(KEY, builder)
    assert first.built and len(builder.builds) == 1
    assert first.engine == b'ENGINE:' + KEY.digest().encode() * 50
    second = cache.load(KEY, builder)
    assert not second.built and len(builder.builds) == 1
    assert second.engine == first.engine and second.path == first.path
    sidecar = json.loads(cache.sidecar_path(KEY).read_text())
    data = first.path.read_bytes()
    assert sidecar['key'] == KEY.to_dict()
    assert sidecar['engine_bytes'] == len(data)
    assert sidecar['engine_sha256'] == hashlib.sha256(data).hexdigest()
    assert first.path.name.startswith('b0-cityscapes_512x1024_fp16_')
    # Atomic writes leave no temp files behind; files are private.
    assert sorted(p.name for p in cache.directory.iterdir()) == sorted(
        [first.path.name, cache.sidecar_path(KEY).name, KEY.stem + '.lock'])
    assert stat.S_IMODE(first.path.stat().st_mode) == 0o600


CHANGES = {
    'model': 'b1-cityscapes', 'weights_sha256': 'b' * 64, 'input_shape': (1, 3, 256, 512),
    'precision': 'int8', 'calibration_sha256': 'c' * 64, 'tensorrt_version': '8.6.2',
    'gpu_name': 'NVIDIA GeForce RTX 4090', 'compute_capability': '8.9',
    'build_settings': (('recipe', '2'), ('typing', 'weak')),
}


@pytest.mark.parametrize('field', sorted(CHANGES))
def test_each_key_component_gives_another_engine(cache, builder, field, caplog):
    caplog.set_level(logging.INFO, logger='evit_ros.runtime')
    cache.load(KEY, builder)
    other = dataclasses.replace(KEY, **{field: CHANGES[field]})
    assert other.digest() != KEY.digest()
    assert cache.engine_path(other) != cache.engine_path(KEY)
    loaded = cache.load(other, builder)
    assert loaded.built and builder.builds == [KEY, other]
    assert cache.engine_path(KEY).exists() and cache.engine_path(other).exists()
    assert warnings_of(caplog) == []
    if field not in ('model', 'input_shape', 'precision'):
        # Same model, size and precision: the build line says what changed.
        assert f'differs: {field}: cached' in loaded.reason


def damage_truncate(cache):
    path = cache.engine_path(KEY)
    path.write_bytes(path.read_bytes()[:100])


def damage_flip_byte(cache):
    path = cache.engine_path(KEY)
    data = bytearray(path.read_bytes())
    data[10] ^= 0xFF
    path.write_bytes(bytes(data))


def damage_other_tensorrt(cache):
    path = cache.sidecar_path(KEY)
    sidecar = json.loads(path.read_text())
    sidecar['key']['tensorrt_version'] = '8.5.2'
    path.write_text(json.dumps(sidecar))


def damage_remove_sidecar(cache):
    cache.sidecar_path(KEY).unlink()


def damage_garble_sidecar(cache):
    cache.sidecar_path(KEY).write_text('{"format": 1, "key": {"model": ')


def damage_sidecar_key_fields(cache):
    path = cache.sidecar_path(KEY)
    sidecar = json.loads(path.read_text())
    del sidecar['key']['gpu_name']
    path.write_text(json.dumps(sidecar))


def damage_old_format(cache):
    path = cache.sidecar_path(KEY)
    sidecar = json.loads(path.read_text())
    sidecar['format'] = 0
    path.write_text(json.dumps(sidecar))


@pytest.mark.parametrize('damage, reason', [
    (damage_truncate, 'the engine file is truncated (100 of '),
    (damage_flip_byte, 'the engine file is corrupt (its sha256 does not match'),
    (damage_other_tensorrt, "tensorrt_version: cached '8.5.2', now '10.3.0'"),
    (damage_remove_sidecar, 'is missing'),
    (damage_garble_sidecar, 'is unreadable (JSONDecodeError'),
    (damage_sidecar_key_fields, 'its sidecar key is unusable'),
    (damage_old_format, 'its sidecar has format 0'),
])
def test_bad_cached_engine_is_rebuilt_with_one_line(cache, builder, caplog, damage, reason):
    cache.load(KEY, builder)
    damage(cache)
    caplog.set_level(logging.INFO, logger='evit_ros.runtime')
    loaded = cache.load(KEY, builder)
    assert loaded.built and len(builder.builds) == 2
    lines = warnings_of(caplog)
    assert len(lines) == 1, lines
    assert reason in lines[0] and cache.engine_path(KEY).name in lines[0]
    # The rebuilt engine is intact and loads without another build.
    assert loaded.engine == b'ENGINE:' + KEY.digest().encode() * 50
    assert not cache.load(KEY, builder).built and len(builder.builds) == 2


def test_deserialisation_failure_rebuilds(cache, builder, caplog):
    cache.load(KEY, builder)
    builder.fail_deserialize = 1
    caplog.set_level(logging.INFO, logger='evit_ros.runtime')
    loaded = cache.load(KEY, builder)
    assert loaded.built and len(builder.builds) == 2
    lines = warnings_of(caplog)
    assert len(lines) == 1
    assert 'deserialising it failed (RuntimeError: Serialization assertion' in lines[0]


def test_fresh_engine_that_does_not_load_is_an_error(cache, builder):
    cache.load(KEY, builder)
    builder.fail_deserialize = 2
    with pytest.raises(EngineCacheError, match='the engine just built .* does not load'):
        cache.load(KEY, builder)  # neither the cached nor the rebuilt engine loads


def test_rebuild_on_request(cache, builder):
    cache.load(KEY, builder)
    loaded = cache.load(KEY, builder, rebuild=True)
    assert loaded.built and loaded.reason == 'a rebuild was requested'
    assert len(builder.builds) == 2


def test_key_round_trips_through_json():
    data = json.loads(json.dumps(KEY.to_dict()))
    assert EngineKey.from_dict(data) == KEY
    with pytest.raises(ValueError, match='key fields'):
        EngineKey.from_dict({**data, 'extra': 1})
    with pytest.raises(ValueError, match='malformed'):
        EngineKey.from_dict({**data, 'input_shape': 'big'})


def test_engine_dir_is_private(tmp_path):
    fresh = prepare_engine_dir(tmp_path / 'a' / 'engines')
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700
    shared = tmp_path / 'shared'
    shared.mkdir()
    os.chmod(shared, 0o777)
    prepare_engine_dir(shared)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o700
    blocked = tmp_path / 'file'
    blocked.write_text('not a folder')
    with pytest.raises(EngineCacheError, match='cannot use engine folder'):
        prepare_engine_dir(blocked)


def test_default_engine_dir(monkeypatch, tmp_path):
    monkeypatch.setenv(ENGINE_DIR_ENV, str(tmp_path / 'mine'))
    assert default_engine_dir() == (tmp_path / 'mine').resolve()
    assert EngineCache().directory == (tmp_path / 'mine').resolve()
    monkeypatch.delenv(ENGINE_DIR_ENV)
    assert default_engine_dir().name == 'engines'


def test_concurrent_loads_build_once(cache, builder, caplog):
    # A second process (here: thread) waits for the first one's build, then loads it.
    caplog.set_level(logging.INFO, logger='evit_ros.runtime')
    waiting = threading.Event()

    class Watch(logging.Handler):
        def emit(self, record):
            if 'waiting for another process' in record.getMessage():
                waiting.set()

    class SlowBuilder(StandInBuilder):
        def build(self, key):
            assert waiting.wait(10), 'the second loader never waited'
            return super().build(key)

    slow = SlowBuilder()
    watch = Watch()
    logging.getLogger('evit_ros.runtime').addHandler(watch)
    results = []
    try:
        threads = [threading.Thread(target=lambda: results.append(cache.load(KEY, slow)))
                   for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
    finally:
        logging.getLogger('evit_ros.runtime').removeHandler(watch)
    assert len(slow.builds) == 1
    assert sorted(r.built for r in results) == [False, True]


def test_heartbeat_logs_while_building(cache, caplog):
    caplog.set_level(logging.INFO, logger='evit_ros.runtime')
    beats = threading.Event()

    class Count(logging.Handler):
        def __init__(self):
            super().__init__()
            self.lines = []

        def emit(self, record):
            if 'elapsed' in record.getMessage():
                self.lines.append(record.getMessage())
                if len(self.lines) >= 2:
                    beats.set()

    class LongBuilder(StandInBuilder):
        def build(self, key):
            assert beats.wait(10), 'no heartbeat while building'
            return super().build(key)

        def progress(self):
            return 'Building engine 1/2'

    counter = Count()
    logging.getLogger('evit_ros.runtime').addHandler(counter)
    try:
        EngineCache(cache.directory, heartbeat_s=0.01).load(KEY, LongBuilder())
    finally:
        logging.getLogger('evit_ros.runtime').removeHandler(counter)
    assert len(counter.lines) >= 2
    assert counter.lines[0].startswith(f'building {KEY.stem}.engine: ')
    assert counter.lines[0].endswith('s elapsed (Building engine 1/2)')


def test_heartbeat_stops_with_the_block():
    with BuildHeartbeat('x', interval_s=0.01) as beat:
        pass
    assert not beat._thread.is_alive()


def test_weights_fingerprint(tmp_path):
    entry = get_entry('b0-cityscapes')
    model = create_model('b0-cityscapes')
    assert weights_sha256(model, entry, 'official') == entry.checkpoint_sha256
    path = tmp_path / 'custom.pt'
    torch.save({'state_dict': model.state_dict()}, path)
    assert weights_sha256(model, entry, str(path)) == sha256_of(str(path))
    # A module without a registry entry: hash of the state dict, sensitive to any weight.
    first = weights_sha256(model)
    assert first.startswith('state-dict:') and weights_sha256(model) == first
    with torch.no_grad():
        model.head.output_ops[0].op_list[-1].conv.bias[3] += 1e-6
    assert weights_sha256(model) != first


def test_engines_list_and_clean_cli(cache, builder, capsys):
    cache.load(KEY, builder)
    other = dataclasses.replace(KEY, precision='fp32', tensorrt_version='8.6.2')
    cache.load(other, builder)
    damage_truncate(cache)
    (cache.directory / 'README.md').write_text('keep me')
    (cache.directory / 'notes.json').write_text('{}')
    assert main(['engines', 'list', '--engine-dir', str(cache.directory)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f'engines in {cache.directory}:'
    assert out[1].split()[:5] == ['ENGINE', 'MODEL', 'INPUT', 'PREC', 'TENSORRT']
    rows = {line.split()[0]: line for line in out[2:]}
    assert set(rows) == {cache.engine_path(KEY).name, cache.engine_path(other).name}
    assert 'b0-cityscapes  512x1024  fp32  8.6.2' in rows[cache.engine_path(other).name]
    assert rows[cache.engine_path(other).name].endswith('ok')
    assert 'truncated' in rows[cache.engine_path(KEY).name]

    assert main(['engines', 'clean', '--engine-dir', str(cache.directory)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == f'6 file(s) removed from {cache.directory}'
    assert sorted(p.name for p in cache.directory.iterdir()) == ['README.md', 'notes.json']
    assert main(['engines', 'list', '--engine-dir', str(cache.directory)]) == 0
    assert capsys.readouterr().out.strip() == f'no engines in {cache.directory}'


@pytest.mark.skipif(importlib.util.find_spec('tensorrt') is not None,
                    reason='TensorRT is installed here')
def test_build_engine_without_tensorrt_says_so(tmp_path, capsys):
    code = main(['build-engine', '--model', 'b0-cityscapes', '--height', '64', '--width',
                 '128', '--precision', 'fp16', '--engine-dir', str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert err.splitlines() == [
        'evit-ros build-engine: error: build-engine needs an NVIDIA GPU with TensorRT (8.5, '
        '8.6, 10.x or 11.x) and cuda-python or pycuda; TensorRT is not installed here (it '
        "needs an NVIDIA GPU; on a Jetson it comes with JetPack) (No module named "
        "'tensorrt'). Without a GPU, run the model on the CPU with onnxruntime instead"]
    assert '--backend' not in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize('argv, message', [
    (['--model', 'b9-mars'], "unknown model 'b9-mars'"),
    (['--model', 'b0-cityscapes', '--height', '100', '--width', '128'],
     'not a multiple of 32'),
    (['--model', 'b0-cityscapes', '--precision', 'int8'], 'int8 needs calibration data'),
    (['--model', 'b0-cityscapes', '--calib', '/nowhere'], 'only applies to --precision int8'),
])
def test_build_engine_bad_arguments(argv, message, capsys):
    assert main(['build-engine'] + argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
