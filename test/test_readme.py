"""Every ```bash block of README.md, run through a real shell as typed.

Each block is one test (id: the nearest heading and the block's number under it). It runs
as a ``bash -e`` script, so tilde expansion, quoting, globs and paths behave as they do for a
user pasting it, with what ``. .venv/bin/activate`` gives: the venv's ``bin`` first on PATH.
It runs from the root of a fresh copy of this working tree (tracked and unignored files,
``.venv`` linked in, ``../shared`` beside it), so the files the commands write (``demo_out/``,
exported models) never touch the checkout; ``HOME`` and every cache are in a temporary
folder; ROS discovery stays on localhost, on a test domain. Before the first block the
official B0 checkpoint is imported into that cache with ``evit-ros weights import`` (the
offline stand-in for ``evit-ros weights fetch``, which needs the internet).

- A block with ``<!-- not run here: REASON -->`` on the line before its fence is skipped
  with that reason, by name.
- A block whose first command starts the node (``segmentation_node`` / ``evit-ros node``)
  runs in the background until the node is seen over real DDS subscribing to the topics the
  command names: its ``cameras`` parameter, else the target of its ``~/image`` remap, else
  ``<namespace>/segmentation_node/image`` (with ``autostart:=false``: until the node is up);
  then it gets Ctrl-C (SIGINT, as a user stops it) and must exit.
- ``make demo`` must exit 0 and leave every ``demo_out/...`` file its README section names.
- A node block that arms ``EVIT_ROS_FAULT_INJECTION`` must also log that it is armed.
- Any other block must exit 0 within ``BLOCK_TIMEOUT`` seconds.
"""

import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

from conftest import REPO, require_shared
import pytest
from ros_harness import next_domain_id, RosClient
import yaml

README = REPO / 'README.md'
VENV = REPO / '.venv'
BLOCK_TIMEOUT = 180.0    # seconds for a block that is not a node
NODE_TIMEOUT = 240.0     # seconds until the node subscribes (first start exports the ONNX model)
STOP_TIMEOUT = 15.0      # seconds for a node to exit after Ctrl-C
SKIP_MARKER = re.compile(r'^<!--\s*not run here:\s*(.+?)\s*-->$')
NODE_COMMAND = re.compile(r'(^|\s)(segmentation_node|evit-ros node)(\s|$)')
HELP = re.compile(r'\s(-h|--help)(\s|$)')
MARK_HINT = ('(a block that cannot run here gets the line <!-- not run here: REASON --> '
             'before its fence)')


@dataclass
class Block:
    """One ```bash block of the README."""

    name: str              # nearest heading, slugged, and the block's number under it
    heading: str
    line: int              # 1-based line of the opening fence
    text: str
    skip_reason: Optional[str]

    def commands(self) -> List[str]:
        """Return the block's command lines, continuations joined, comments dropped."""
        joined = re.sub(r'\s*\\\n\s*', ' ', self.text)
        lines = (line.split(' #')[0].strip() for line in joined.splitlines())
        return [line for line in lines if line and not line.startswith('#')]


def slug(heading: str) -> str:
    """Return a heading as lower-case words joined by ``-``."""
    return '-'.join(re.findall(r'[a-z0-9]+', heading.lower())) or 'top'


def readme_blocks(text: str) -> List[Block]:
    """Return the ```bash blocks of README text, in order."""
    blocks, heading, counts = [], '', {}
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith('#') and not line.startswith('#!'):
            heading = line.lstrip('#').strip()
        fence = line.strip()
        if fence.startswith('```'):
            start = index
            index += 1
            while index < len(lines) and lines[index].strip() != '```':
                index += 1
            if fence == '```bash':
                before = [b.strip() for b in lines[:start] if b.strip()]
                marker = SKIP_MARKER.match(before[-1]) if before else None
                counts[heading] = counts.get(heading, 0) + 1
                blocks.append(Block(
                    name=f'{slug(heading)}-{counts[heading]}', heading=heading, line=start + 1,
                    text='\n'.join(lines[start + 1:index]) + '\n',
                    skip_reason=marker.group(1) if marker else None))
        index += 1
    return blocks


def section_text(text: str, heading: str) -> str:
    """Return the README text under ``heading`` up to the next heading of any level."""
    lines = text.splitlines()
    in_fence, starts = False, []
    for number, line in enumerate(lines):
        if line.strip().startswith('```'):
            in_fence = not in_fence
        elif not in_fence and line.startswith('#'):
            starts.append((number, line.lstrip('#').strip()))
    start = next(number for number, title in starts if title == heading)
    end = next((number for number, _ in starts if number > start), len(lines))
    return '\n'.join(lines[start:end])


BLOCKS = readme_blocks(README.read_text())


class Shell:
    """A user's shell session: a fresh copy of the tree, a private HOME, the venv activated."""

    def __init__(self, root: Path):
        self.root = root
        self.repo = root / REPO.name
        # A home folder named like a user's (letters and digits): with an unquoted '~' rcl
        # then takes '/tmp/.../user/image:=...' as a valid, silently useless remap, as for
        # a real user; a '-' or a '__' in the path (mkdtemp's names may hold both) would
        # make rcl refuse it loudly instead.
        home = Path('/tmp') / f'readme{secrets.token_hex(6)}'
        home.mkdir(mode=0o700)
        self.home = home / 'user'
        self.home.mkdir()
        self._copy_tree()
        (root / 'shared').symlink_to(require_shared())

    def _copy_tree(self) -> None:
        listed = subprocess.run(['git', 'ls-files', '-z', '-co', '--exclude-standard'],
                                cwd=REPO, capture_output=True, check=True).stdout
        for name in filter(None, listed.decode().split('\0')):
            source = REPO / name
            if source.is_file():
                target = self.repo / name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)   # keeps mtimes: make sees the venv up to date
        # The venv of the checkout, entry by entry, with its own fresh install stamp so that
        # `make` in the copy never reinstalls into the checkout's venv.
        venv = self.repo / '.venv'
        venv.mkdir()
        for entry in VENV.iterdir():
            if entry.name != '.evit_ros_installed':
                (venv / entry.name).symlink_to(entry)
        (venv / '.evit_ros_installed').touch()

    def env(self, domain: int) -> dict:
        """Return the environment of a shell with the venv activated."""
        return {
            'PATH': f'{VENV.resolve() / "bin"}:/usr/local/bin:/usr/bin:/bin',
            'VIRTUAL_ENV': str(VENV.resolve()),
            'HOME': str(self.home),
            'XDG_CACHE_HOME': str(self.home / '.cache'),
            'TMPDIR': str(self.root),
            'LANG': 'C.UTF-8',
            'ROS_DOMAIN_ID': str(domain),
            'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST',
            # A block that hangs is sent SIGABRT first: every Python process in it then
            # prints where each of its threads is (see Run.wait).
            'PYTHONFAULTHANDLER': '1',
        }

    def start(self, script: str, domain: int) -> 'Run':
        """Start ``script`` in ``bash -e`` in its own process group."""
        return Run(script, self.repo, self.env(domain))


def _group_pids(pgid: int) -> List[int]:
    """Return the processes in process group ``pgid`` (from /proc)."""
    pids = []
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            try:
                if os.getpgid(int(entry)) == pgid:
                    pids.append(int(entry))
            except OSError:
                continue
    return pids


class Run:
    """A bash script running in the copy; output goes to a temporary file."""

    def __init__(self, script: str, cwd: Path, env: dict):
        self.script = script
        self._log = tempfile.TemporaryFile(mode='w+')
        self.proc = subprocess.Popen(['bash', '-e', '-c', script], cwd=cwd, env=env,
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def output(self, tail: int = 4000) -> str:
        """Return the last ``tail`` characters the script printed."""
        self._log.flush()
        self._log.seek(0)
        return self._log.read()[-tail:]

    def wait(self, timeout: float) -> int:
        """Wait for the script to finish; fail naming the script if it takes longer."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.dump_stacks()
            self.kill()
            pytest.fail(f'still running after {timeout:.0f} s:\n{self.script}\n'
                        f'{self.output(16000)}', pytrace=False)

    def dump_stacks(self) -> None:
        """SIGABRT the Python processes of the script (not bash) so that each prints its
        threads' stacks (``PYTHONFAULTHANDLER``), and give them a moment to do it."""
        for pid in _group_pids(self.proc.pid):
            if pid != self.proc.pid:
                try:
                    os.kill(pid, signal.SIGABRT)
                except ProcessLookupError:
                    pass
        time.sleep(3.0)

    def interrupt(self, timeout: float) -> Optional[int]:
        """Send Ctrl-C to the process group; return the exit code, None if it did not exit."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        """Kill the whole process group."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()


@pytest.fixture(scope='module')
def shell(tmp_path_factory):
    """The user's shell: a copy of the tree with the official B0 weights in its cache."""
    shell = Shell(tmp_path_factory.mktemp('readme'))
    weights = require_shared('weights', 'efficientvit_seg_b0_cityscapes.pt')
    run = shell.start(f'evit-ros weights import b0-cityscapes {shlex.quote(str(weights))}',
                      next_domain_id())
    assert run.wait(120) == 0, run.output()
    yield shell
    shutil.rmtree(shell.home.parent, ignore_errors=True)


# What a long-running or file-writing block must do, keyed by its first command.
@dataclass
class Check:
    """How to check a block whose first command matches ``pattern``."""

    pattern: re.Pattern
    run: Callable[[Shell, Block], None]


def node_input_topics(command: str) -> List[str]:
    """Return the topics the node started by ``command`` should subscribe to.

    Read from the command as the README shows it (``shlex`` does not expand ``~``): the
    ``cameras`` parameter's topics; else the target of a ``~/image`` remap; else ``~/image``
    under the ``__ns`` remap, if any. None (``[]``) with ``autostart:=false``: the node then
    waits, unconfigured, for a lifecycle transition.
    """
    words = shlex.split(command)

    def assignments(flags):
        return dict(words[i + 1].split(':=', 1) for i, word in enumerate(words[:-1])
                    if word in flags and ':=' in words[i + 1])
    remaps, params = assignments(('-r', '--remap')), assignments(('-p', '--param'))
    if params.get('autostart', '').lower() == 'false':
        return []
    if 'cameras' in params:
        return [str(topic) for topic in yaml.safe_load(params['cameras'])]
    if '~/image' in remaps:
        return [remaps['~/image']]
    namespace = remaps.get('__ns', '').rstrip('/')
    return [f'{namespace}/segmentation_node/image']


def node_subscriptions(client: RosClient, observer: str) -> dict:
    """Return ``{topic: [node names]}`` of every subscription but the observer's."""
    found = {}
    for topic, _ in client.node.get_topic_names_and_types():
        for info in client.node.get_subscriptions_info_by_topic(topic):
            if info.node_name != observer:
                found.setdefault(topic, []).append(
                    f'{info.node_namespace.rstrip("/")}/{info.node_name}')
    return found


def run_node_block(shell: Shell, block: Block) -> None:
    """Start the block, see the node subscribe to its inputs over DDS, stop it with Ctrl-C."""
    topics = node_input_topics(block.commands()[0])
    expected = ', '.join(topics) or 'nothing (autostart:=false)'
    domain = next_domain_id()
    client = RosClient(domain, name='readme_observer')
    run = shell.start(block.text, domain)
    try:
        deadline = time.monotonic() + NODE_TIMEOUT
        wrong_since = None
        while True:
            subscriptions = node_subscriptions(client, 'readme_observer')
            if topics and all(topic in subscriptions for topic in topics):
                break
            if not topics and 'segmentation_node' in client.node.get_node_names():
                break
            images = sorted(t for t in subscriptions if 'image' in t and 'camera_info' not in t
                            and t not in topics)
            if images:
                wrong_since = wrong_since or time.monotonic()
                if time.monotonic() - wrong_since > 3.0:
                    raise AssertionError(
                        f'the node listens on {", ".join(images)}, not on {expected} as the '
                        f'README command says (is a ~ in a remap unquoted?)\n{block.text}')
            if run.proc.poll() is not None:
                raise AssertionError(f'exited with {run.proc.returncode} before subscribing '
                                     f'to {expected}:\n{block.text}\n{run.output()}')
            if time.monotonic() > deadline:
                raise AssertionError(f'no subscription to {expected} after '
                                     f'{NODE_TIMEOUT:.0f} s:\n{block.text}\n{run.output()}')
            time.sleep(0.5)
        if 'EVIT_ROS_FAULT_INJECTION=' in block.commands()[0]:
            # The README: the node logs a warning at start-up that the fault is armed.
            assert 'EVIT_ROS_FAULT_INJECTION' in run.output(100000), run.output()
        code = run.interrupt(STOP_TIMEOUT)
        assert code is not None, f'the node did not stop within {STOP_TIMEOUT:.0f} s of Ctrl-C'
    finally:
        run.kill()
        client.close()


def readme_paths(section: str, prefix: str) -> List[str]:
    """Return the distinct paths starting with ``prefix`` that ``section`` names."""
    found = re.findall(rf'(?<![\w/]){re.escape(prefix)}[\w./-]*[\w]', section)
    return sorted(set(found))


def run_demo_block(shell: Shell, block: Block) -> None:
    """Run ``make demo``; every ``demo_out/...`` file its section names must exist."""
    out = shell.repo / 'demo_out'
    shutil.rmtree(out, ignore_errors=True)
    run = shell.start(block.text, next_domain_id())
    code = run.wait(BLOCK_TIMEOUT)
    assert code == 0, f'exit {code}:\n{block.text}\n{run.output()}'
    named = readme_paths(section_text(README.read_text(), block.heading), 'demo_out/')
    assert named, 'the demo section names no demo_out/ files'
    missing = [path for path in named if not (shell.repo / path).exists()]
    assert not missing, f'the README says the demo writes {missing}; it did not:\n' \
                        f'{run.output()}'


CHECKS = [
    Check(NODE_COMMAND, run_node_block),
    Check(re.compile(r'(^|\s)make demo(\s|$)'), run_demo_block),
]


def run_plain_block(shell: Shell, block: Block) -> None:
    """Run the block; it must exit 0 within the time limit."""
    run = shell.start(block.text, next_domain_id())
    code = run.wait(BLOCK_TIMEOUT)
    assert code == 0, f'exit {code}:\n{block.text}\n{run.output()}\n{MARK_HINT}'


def check_for(block: Block) -> Callable[[Shell, Block], None]:
    """Return how to run ``block``: the check of its first command, or the plain run."""
    first = block.commands()[0] if block.commands() else ''
    if HELP.search(first):
        return run_plain_block
    return next((c.run for c in CHECKS if c.pattern.search(first)), run_plain_block)


@pytest.mark.parametrize('block', BLOCKS, ids=[b.name for b in BLOCKS])
def test_readme_block(block, request):
    if block.skip_reason:
        pytest.skip(f'README line {block.line}: not run here: {block.skip_reason}')
    check_for(block)(request.getfixturevalue('shell'), block)


def node_block() -> Block:
    """Return the README's first runnable block that starts the node with a remap."""
    return next(b for b in BLOCKS if not b.skip_reason and check_for(b) is run_node_block
                and "'~/image:=" in b.text)


def test_an_unquoted_tilde_is_caught(shell):
    """The old README's command: bash expands ``~``, so the remap does not apply."""
    block = node_block()
    old = Block(name='old', heading=block.heading, line=block.line, skip_reason=None,
                text=re.sub(r"'(~/[^']*:=[^']*)'", r'\1', block.text))
    assert old.text != block.text and "'" not in old.commands()[0]
    with pytest.raises(AssertionError, match=r'the node listens on /segmentation_node/image, '
                                             r'not on /camera/image_raw'):
        run_node_block(shell, old)


def test_blocks_are_found_with_their_markers():
    text = '\n'.join([
        '# Top', '```bash', 'echo one', '```', '## Node',
        '<!-- not run here: needs a GPU -->', '```bash', 'evit-ros x \\', '    --y 1  # why',
        '```', '```text', 'sample', '```', '```bash', '# comment', 'segmentation_node', '```'])
    blocks = readme_blocks(text)
    assert [(b.name, b.skip_reason) for b in blocks] == [
        ('top-1', None), ('node-1', 'needs a GPU'), ('node-2', None)]
    assert blocks[1].commands() == ['evit-ros x --y 1']
    assert check_for(blocks[2]) is run_node_block and check_for(blocks[0]) is run_plain_block
    assert node_input_topics("segmentation_node --ros-args -r '~/image:=/cam/raw'") == [
        '/cam/raw']
    assert node_input_topics("segmentation_node --ros-args -p cameras:='[/a/image, /b/image]'") \
        == ['/a/image', '/b/image']
    assert node_input_topics('segmentation_node --ros-args -p autostart:=false') == []
    assert check_for(readme_blocks('```bash\nevit-ros node --help\n```')[0]) is run_plain_block
    assert node_input_topics('evit-ros node --ros-args -r __ns:=/front') == [
        '/front/segmentation_node/image']


UNQUOTED_TILDE_REMAP = re.compile(r"(^|\s)~/\S*:=")


def test_every_remap_in_the_readme_quotes_its_tilde():
    """A user copying any README command line gets the remap it shows."""
    unquoted = [line for b in BLOCKS for line in b.commands() if UNQUOTED_TILDE_REMAP.search(line)]
    assert not unquoted, unquoted


def test_node_help_examples_quote_their_tilde():
    from evit_ros.cli.node import EPILOG
    assert "-r '~/image:=/camera/image_raw'" in EPILOG
    assert not [line for line in EPILOG.splitlines() if UNQUOTED_TILDE_REMAP.search(line)]
