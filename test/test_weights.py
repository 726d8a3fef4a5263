"""``evit-ros weights``: fetch, import, list, against a real HTTP server on 127.0.0.1.

The server (``http.server`` in a thread) serves files from a temporary folder, in modes that
behave like real servers do: honouring ``Range``, ignoring it, dropping the connection
midway, sending no ``Content-Length``, redirecting to plain http.
"""

import hashlib
import json
import os
import shutil
import socket
import stat
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from conftest import REPO, require_shared
import pytest
import torch

from evit_ros import download, weights
from evit_ros.cli import main
from evit_ros.model import CheckpointError, create_model, get_entry, MODELS
from evit_ros.model.checkpoint import read_state_dict

B0 = get_entry('b0-cityscapes')
B1 = get_entry('b1-cityscapes')
B0_SHA = B0.checkpoint_sha256


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Files(BaseHTTPRequestHandler):
    """GET /<mode>/<variant>/<file>: serve ``root/<variant>/<file>`` the way ``mode`` says."""

    root: Path
    log: list

    def log_message(self, *args):
        pass

    def do_GET(self):
        _, mode, variant, name = self.path.split('/', 3)
        record = {'mode': mode, 'variant': variant, 'range': self.headers.get('Range'),
                  'status': None, 'sent': 0}
        self.log.append(record)
        if mode == 'redirect':
            record['status'] = 302
            self.send_response(302)
            self.send_header('Location', f'http://example.com/{name}')
            self.end_headers()
            return
        path = self.root / variant / name
        if not path.is_file():
            record['status'] = 404
            self.send_error(404)
            return
        body = path.read_bytes()
        start = 0
        wanted = self.headers.get('Range', '')
        if mode == 'range' and wanted.startswith('bytes=') and wanted.endswith('-'):
            start = int(wanted[6:-1])
            if start >= len(body):
                record['status'] = 416
                self.send_response(416)
                self.send_header('Content-Range', f'bytes */{len(body)}')
                self.end_headers()
                return
            record['status'] = 206
            self.send_response(206)
            self.send_header('Content-Range', f'bytes {start}-{len(body) - 1}/{len(body)}')
        else:
            record['status'] = 200
            self.send_response(200)
        if mode != 'nolength':
            self.send_header('Content-Length', str(len(body) - start))
        self.end_headers()
        payload = body[start:len(body) // 2] if mode == 'drop' else body[start:]
        self.wfile.write(payload)   # 'drop': half the file, then the connection closes
        record['sent'] = len(payload)


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    """The served folder: good, corrupted and wrong-size b0 files, two random b1 files."""
    root = tmp_path_factory.mktemp('served')
    good = require_shared('weights', B0.checkpoint_file).read_bytes()
    for variant in ('good', 'corrupt', 'short', 'tofu', 'tofu2'):
        (root / variant).mkdir()
    (root / 'good' / B0.checkpoint_file).write_bytes(good)
    corrupt = bytearray(good)
    for offset in range(len(good) // 2, len(good) // 2 + 64):
        corrupt[offset] ^= 0xFF
    (root / 'corrupt' / B0.checkpoint_file).write_bytes(bytes(corrupt))
    (root / 'short' / B0.checkpoint_file).write_bytes(b'x' * 1000)
    torch.manual_seed(0)
    state_dict = create_model(B1.name).state_dict()
    torch.save({'state_dict': state_dict}, root / 'tofu' / B1.checkpoint_file)
    first = next(iter(state_dict))
    state_dict[first] = state_dict[first] + 1.0
    torch.save({'state_dict': state_dict}, root / 'tofu2' / B1.checkpoint_file)
    return root


@pytest.fixture(scope='module')
def http_server(files):
    handler = type('Handler', (Files,), {'root': files, 'log': []})
    server = ThreadingHTTPServer(('127.0.0.1', 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, handler
    server.shutdown()
    server.server_close()


@pytest.fixture
def serve(http_server, monkeypatch):
    """``serve(mode, variant)`` points EVIT_ROS_WEIGHTS_URL there; ``.log`` lists requests."""
    server, handler = http_server
    handler.log.clear()
    monkeypatch.delenv('EVIT_ROS_WEIGHTS_DIR', raising=False)

    def point(mode='range', variant='good'):
        url = f'http://127.0.0.1:{server.server_address[1]}/{mode}/{variant}/'
        monkeypatch.setenv(weights.URL_ENV, url)
        return url
    point.log = handler.log
    return point


def run_cli(capsys, *argv):
    code = main(['weights', *argv])
    out, err = capsys.readouterr()
    return code, out, err


def cached(entry=B0) -> Path:
    return weights.cache_dir() / entry.checkpoint_file


def cache_listing() -> list:
    folder = weights.cache_dir()
    return sorted(os.listdir(folder)) if folder.exists() else []


def part_file(entry=B0) -> Path:
    return weights.cache_dir() / (entry.checkpoint_file + weights.PART_SUFFIX)


def test_fetch_installs_a_verified_private_checkpoint_usable_without_weights_dir(
        serve, files, capsys):
    serve('range', 'good')
    code, out, err = run_cli(capsys, 'fetch', 'b0-cityscapes')
    assert code == 0, err
    assert f'{B0.name}: downloaded: {cached()}' in out
    assert f'sha256 {B0_SHA} verified (published)' in out
    assert weights.sha256_of(str(cached())) == B0_SHA
    assert cache_listing() == [B0.checkpoint_file]   # no .part left
    assert stat.S_IMODE(weights.cache_dir().stat().st_mode) == 0o700
    assert stat.S_IMODE(cached().stat().st_mode) == 0o600
    assert [(r['range'], r['status']) for r in serve.log] == [(None, 200)]

    model = create_model('b0-cityscapes', weights='official')   # only the cache holds it
    reference = read_state_dict(str(files / 'good' / B0.checkpoint_file))
    loaded = model.state_dict()
    assert len(loaded) == len(reference) == 230
    assert all(torch.equal(loaded[key], reference[key]) for key in reference)

    code, out, err = run_cli(capsys, 'fetch', 'b0-cityscapes')
    assert code == 0 and 'already cached' in out
    assert len(serve.log) == 1, 'a verified cached file is not downloaded again'
    code, out, err = run_cli(capsys, 'fetch', '--force', 'b0-cityscapes')
    assert code == 0 and 'downloaded' in out and len(serve.log) == 2


def test_half_part_file_is_resumed_with_a_range_request(serve, files, capsys):
    serve('range', 'good')
    good = (files / 'good' / B0.checkpoint_file).read_bytes()
    half = len(good) // 2
    weights.ensure_cache_dir()
    part_file().write_bytes(good[:half])
    code, out, err = run_cli(capsys, 'fetch', 'b0-cityscapes')
    assert code == 0, err
    assert serve.log == [{'mode': 'range', 'variant': 'good', 'range': f'bytes={half}-',
                          'status': 206, 'sent': len(good) - half}]
    assert weights.sha256_of(str(cached())) == B0_SHA
    assert not part_file().exists()


def test_corrupt_part_file_is_discarded_and_downloaded_again(serve, capsys):
    serve('range', 'good')
    weights.ensure_cache_dir()
    part_file().write_bytes(b'\0' * 100_000)
    code, out, err = run_cli(capsys, 'fetch', 'b0-cityscapes')
    assert code == 0, err
    assert 'fails its sha256 check; discarded it, downloading from the start' in err
    requests = [(r['range'], r['status']) for r in serve.log]
    assert requests == [('bytes=100000-', 206), (None, 200)]
    assert weights.sha256_of(str(cached())) == B0_SHA


def test_server_ignoring_range_gets_the_part_rewritten(serve, files, capsys):
    serve('plain', 'good')
    good = (files / 'good' / B0.checkpoint_file).read_bytes()
    weights.ensure_cache_dir()
    part_file().write_bytes(good[:1000])
    code, out, err = run_cli(capsys, 'fetch', 'b0-cityscapes')
    assert code == 0, err
    assert [(r['range'], r['status'], r['sent']) for r in serve.log] == [
        ('bytes=1000-', 200, len(good))]
    assert weights.sha256_of(str(cached())) == B0_SHA


def test_part_longer_than_the_file_is_replaced_after_416(serve, files, capsys):
    serve('range', 'good')
    good = (files / 'good' / B0.checkpoint_file).read_bytes()
    weights.ensure_cache_dir()
    part_file().write_bytes(good + b'trailing')
    code, out, err = run_cli(capsys, 'fetch', 'b0-cityscapes')
    assert code == 0, err
    requests = [(r['range'], r['status']) for r in serve.log]
    assert requests == [(f'bytes={len(good) + 8}-', 416), (None, 200)]
    assert weights.sha256_of(str(cached())) == B0_SHA


def test_corrupt_cached_file_is_downloaded_again_without_force(serve, tmp_path, capsys):
    serve('range', 'good')
    weights.ensure_cache_dir()
    shutil.copyfile(corrupted_b0(tmp_path / 'bad'), cached())
    code, out, err = run_cli(capsys, 'fetch', 'b0-cityscapes')
    assert code == 0, err
    assert f'{cached()} fails its sha256 check; downloading it again' in err
    assert 'downloaded' in out and weights.sha256_of(str(cached())) == B0_SHA


def test_dropped_connection_keeps_the_part_and_the_next_fetch_resumes(serve, files, capsys):
    serve('drop', 'good')
    size = (files / 'good' / B0.checkpoint_file).stat().st_size
    code, out, err = run_cli(capsys, 'fetch', 'b0-cityscapes')
    assert code == 1 and out == ''
    assert err.count('\n') == 1 and 'Traceback' not in err
    assert f'stopped after {size // 2} of {size} bytes' in err
    assert 'run the same command again to resume' in err
    assert '`evit-ros weights import b0-cityscapes FILE`' in err
    assert part_file().stat().st_size == size // 2 and not cached().exists()

    serve('range', 'good')
    code, out, err = run_cli(capsys, 'fetch', 'b0-cityscapes')
    assert code == 0, err
    assert serve.log[-1]['range'] == f'bytes={size // 2}-'
    assert weights.sha256_of(str(cached())) == B0_SHA


def test_corrupted_download_is_refused_deleted_and_a_cached_good_file_kept(
        serve, files, capsys):
    bad_sha = weights.sha256_of(str(files / 'corrupt' / B0.checkpoint_file))
    serve('range', 'corrupt')
    code, out, err = run_cli(capsys, 'fetch', 'b0-cityscapes')
    assert code == 1 and 'Traceback' not in err
    assert f'expected {B0_SHA} (published), got {bad_sha}' in err
    assert cache_listing() == []

    serve('range', 'good')
    assert run_cli(capsys, 'fetch', 'b0-cityscapes')[0] == 0
    before = cached().stat()
    serve('range', 'corrupt')
    code, out, err = run_cli(capsys, 'fetch', '--force', 'b0-cityscapes')
    assert code == 1
    assert f'expected {B0_SHA} (published), got {bad_sha}' in err
    assert f'the cached {cached()} is untouched' in err
    assert cache_listing() == [B0.checkpoint_file]
    assert cached().stat().st_ino == before.st_ino
    assert weights.sha256_of(str(cached())) == B0_SHA


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def test_offline_gives_one_line_with_the_url_and_the_import_command(monkeypatch, capsys):
    base = f'http://127.0.0.1:{closed_port()}/w/'
    monkeypatch.setenv(weights.URL_ENV, base)
    code, out, err = run_cli(capsys, 'fetch', 'b0-cityscapes')
    assert code == 1 and out == ''
    assert err.count('\n') == 1 and err.startswith('evit-ros weights: error: cannot reach ')
    assert base + B0.checkpoint_file in err
    assert '`evit-ros weights import b0-cityscapes FILE`' in err
    assert cache_listing() == []


def test_console_script_fetches_and_reports_offline_without_traceback(serve, tmp_path):
    script = REPO / '.venv' / 'bin' / 'evit-ros'
    if not script.is_file():
        pytest.skip(f'needs the console script {script} (pip install -e .)')
    env = {**os.environ, 'EVIT_ROS_CACHE': str(tmp_path / 'c' / 'd')}
    env[weights.URL_ENV] = serve('range', 'good')
    env.pop('EVIT_ROS_WEIGHTS_DIR', None)
    done = subprocess.run([str(script), 'weights', 'fetch', 'b0-cityscapes'], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    installed = tmp_path / 'c' / 'd' / 'weights' / B0.checkpoint_file
    assert weights.sha256_of(str(installed)) == B0_SHA
    for folder in (tmp_path / 'c', tmp_path / 'c' / 'd', installed.parent):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700

    env[weights.URL_ENV] = f'http://127.0.0.1:{closed_port()}/'
    done = subprocess.run([str(script), 'weights', 'fetch', '--force', 'b0-cityscapes'],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and 'Traceback' not in done.stderr
    assert done.stderr.count('\n') == 1 and 'weights import b0-cityscapes FILE' in done.stderr
    assert weights.sha256_of(str(installed)) == B0_SHA


@pytest.mark.parametrize('url', ['http://example.com/w/', 'ftp://example.com/w/',
                                 'file:///tmp/', 'http://localhost.example.com/w/'])
def test_non_https_remote_urls_are_refused_before_any_traffic(url, monkeypatch, capsys):
    monkeypatch.setenv(weights.URL_ENV, url)
    code, out, err = run_cli(capsys, 'fetch', 'b0-cityscapes')
    assert code == 1
    assert f'refusing to download {url}{B0.checkpoint_file}: only https:// URLs' in err
    assert cache_listing() == []


def test_url_rules():
    for ok in ('https://huggingface.co/x.pt', 'http://127.0.0.1:8000/x.pt',
               'http://localhost/x.pt', 'http://[::1]:9/x.pt'):
        assert download.check_url(ok) == ok
    for bad in ('http://huggingface.co/x.pt', 'https:///x.pt', 'x.pt', 'data:,abc'):
        with pytest.raises(download.UnsafeURL):
            download.check_url(bad)
    assert weights.weights_url(B0) == B0.checkpoint_url
    assert B0.checkpoint_url.startswith('https://')


def test_redirect_to_plain_http_is_refused(serve, capsys):
    serve('redirect', 'good')
    code, out, err = run_cli(capsys, 'fetch', 'b0-cityscapes')
    assert code == 1
    assert f'refusing to download http://example.com/{B0.checkpoint_file}' in err
    assert cache_listing() == []


def test_wrong_size_and_oversized_responses_are_refused(serve, capsys):
    serve('range', 'short')
    code, out, err = run_cli(capsys, 'fetch', 'b0-cityscapes')
    assert code == 1
    assert 'announces 1000 bytes but the published file has 2924013' in err
    assert cache_listing() == []

    serve('range', 'tofu')
    with pytest.raises(weights.FetchError, match='more than the 100000-byte limit'):
        weights.fetch(B1, max_bytes=100_000)
    serve('nolength', 'tofu')
    with pytest.raises(weights.FetchError, match='sent more than 100000 bytes'):
        weights.fetch(B1, max_bytes=100_000)
    assert cache_listing() == []
    assert weights.recorded_hashes() == {}


def test_unpublished_hash_is_recorded_on_first_fetch_and_enforced_after(
        serve, files, capsys):
    first_sha = weights.sha256_of(str(files / 'tofu' / B1.checkpoint_file))
    other = files / 'tofu2' / B1.checkpoint_file
    other_sha = weights.sha256_of(str(other))
    serve('range', 'tofu')
    code, out, err = run_cli(capsys, 'fetch', 'b1-cityscapes')
    assert code == 0, err
    record = weights.cache_dir() / weights.HASHES_FILE
    assert f'no published sha256; recorded {first_sha} in {record}' in err
    assert f'sha256 {first_sha} recorded now (trust on first use)' in out
    assert json.loads(record.read_text()) == {B1.checkpoint_file: first_sha}
    assert stat.S_IMODE(record.stat().st_mode) == 0o600

    serve('range', 'tofu2')
    code, out, err = run_cli(capsys, 'fetch', '--force', 'b1-cityscapes')
    assert code == 1
    assert f'expected {first_sha} (recorded on first use), got {other_sha}' in err
    assert 'delete its line from' in err
    code, out, err = run_cli(capsys, 'import', 'b1-cityscapes', str(other))
    assert code == 1 and f'got {other_sha}' in err
    assert weights.sha256_of(str(cached(B1))) == first_sha
    assert cache_listing() == [B1.checkpoint_file, weights.HASHES_FILE]

    code, out, err = run_cli(capsys, 'list')
    line = next(row for row in out.splitlines() if row.startswith('b1-cityscapes '))
    assert 'cache' in line and 'verified (recorded on first use)' in line


def test_import_installs_a_good_file_atomically(capsys):
    source = require_shared('weights', B0.checkpoint_file)
    code, out, err = run_cli(capsys, 'import', 'b0-cityscapes', str(source))
    assert code == 0, err
    assert f'{B0.name}: imported: {cached()}' in out and 'verified (published)' in out
    assert weights.sha256_of(str(cached())) == B0_SHA
    assert cache_listing() == [B0.checkpoint_file]
    assert stat.S_IMODE(weights.cache_dir().stat().st_mode) == 0o700
    assert weights.recorded_hashes() == {}, 'a published hash is never recorded'


def test_import_of_another_models_checkpoint_names_the_keys(files, capsys):
    b1_file = files / 'tofu' / B1.checkpoint_file
    code, out, err = run_cli(capsys, 'import', 'b2-cityscapes', str(b1_file))
    assert code == 1 and 'Traceback' not in err
    assert f'checkpoint {b1_file} does not fit model b2-cityscapes: ' in err
    assert ' missing: backbone.' in err and ' mis-shaped: backbone.' in err

    official = require_shared('weights', B0.checkpoint_file)
    code, out, err = run_cli(capsys, 'import', 'b1-cityscapes', str(official))
    assert code == 1 and 'does not fit model b1-cityscapes' in err and ' missing: ' in err
    assert cache_listing() == []
    assert weights.recorded_hashes() == {}


def test_import_of_garbage_is_refused(tmp_path, capsys):
    garbage = tmp_path / 'garbage.pt'
    garbage.write_bytes(b'not a checkpoint\n' * 256)
    code, out, err = run_cli(capsys, 'import', 'b0-cityscapes', str(garbage))
    assert code == 1
    assert f'expected {B0_SHA} (published), got {weights.sha256_of(str(garbage))}' in err
    code, out, err = run_cli(capsys, 'import', 'b1-cityscapes', str(garbage))
    assert code == 1
    assert f'checkpoint {garbage} is not a torch weights file' in err
    assert '.part' not in err, 'errors name the user\'s file, not the temporary copy'
    code, out, err = run_cli(capsys, 'import', 'b1-cityscapes', str(tmp_path / 'none.pt'))
    assert code == 1 and 'none.pt is not a file' in err
    code, out, err = run_cli(capsys, 'import', 'b9-cityscapes', str(garbage))
    assert code == 1 and "unknown model 'b9-cityscapes'" in err
    assert cache_listing() == []


def corrupted_b0(folder: Path) -> Path:
    """A copy of the official b0 file with 64 bytes flipped, in ``folder``."""
    data = bytearray(require_shared('weights', B0.checkpoint_file).read_bytes())
    for offset in range(1000, 1064):
        data[offset] ^= 0xFF
    folder.mkdir(exist_ok=True)
    path = folder / B0.checkpoint_file
    path.write_bytes(bytes(data))
    return path


def test_list_shows_every_model_with_place_size_and_hash_state(tmp_path, monkeypatch,
                                                               capsys):
    bad = corrupted_b0(tmp_path / 'dir')
    monkeypatch.setenv('EVIT_ROS_WEIGHTS_DIR', str(tmp_path / 'dir'))
    code, out, err = run_cli(capsys, 'list')
    assert code == 0
    rows = [line.split() for line in out.splitlines()]
    assert rows[0] == ['MODEL', 'WHERE', 'SIZE', 'SHA256', 'PATH']
    assert [row[0] for row in rows[1:12]] == list(MODELS)
    assert rows[1] == ['b0-cityscapes', 'weights', 'dir', '2.9', 'MB', 'MISMATCH',
                       '(published)', str(bad)]
    assert rows[2] == ['b1-cityscapes', 'missing', '-', 'unknown', '-']
    assert f'searched: {tmp_path / "dir"}, {weights.cache_dir()}' in out

    monkeypatch.delenv('EVIT_ROS_WEIGHTS_DIR')
    assert run_cli(capsys, 'import', 'b0-cityscapes',
                   str(require_shared('weights', B0.checkpoint_file)))[0] == 0
    code, out, err = run_cli(capsys, 'list')
    assert out.splitlines()[1].split() == ['b0-cityscapes', 'cache', '2.9', 'MB', 'verified',
                                           '(published)', str(cached())]


def test_official_weights_failing_sha256_raise_naming_both_values(tmp_path, monkeypatch):
    bad = corrupted_b0(tmp_path / 'dir')
    monkeypatch.setenv('EVIT_ROS_WEIGHTS_DIR', str(bad.parent))
    with pytest.raises(CheckpointError) as raised:
        create_model('b0-cityscapes', weights='official')
    assert f'expected {B0_SHA}, got {weights.sha256_of(str(bad))}' in str(raised.value)


def test_cache_folders_are_created_private(tmp_path, monkeypatch):
    monkeypatch.setenv('EVIT_ROS_CACHE', str(tmp_path / 'a' / 'b'))
    folder = weights.ensure_cache_dir()
    assert folder == tmp_path / 'a' / 'b' / 'weights'
    for path in (tmp_path / 'a', tmp_path / 'a' / 'b', folder):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700
    os.chmod(folder, 0o755)
    weights.ensure_cache_dir()
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_fetch_all_reports_each_missing_file_and_fails(serve, capsys):
    serve('range', 'good')
    code, out, err = run_cli(capsys, 'fetch', 'all')
    assert code == 1
    assert out.startswith(f'{B0.name}: downloaded: {cached()}')
    assert err.count('answered HTTP 404') == 10
    assert err.rstrip().endswith('10 of 11 checkpoints not fetched: ' + ', '.join(
        name for name in MODELS if name != B0.name))
    assert cache_listing() == [B0.checkpoint_file]
