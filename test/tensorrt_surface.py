"""The names TensorRT's Python bindings define in each release, read from NVIDIA's wheels.

The bindings wheels (``tensorrt-bindings`` 8.6, ``tensorrt-cu12-bindings`` 10.3 and 11.4)
download from PyPI without a GPU, but their extension module links against ``libnvinfer``,
``libnvonnxparser`` and ``libnvinfer_plugin``, which cannot be had here. The module only
calls into those libraries when a TensorRT object is created (``createInferBuilder_INTERNAL``
and the like), never while it registers its classes, so it imports against stand-in
libraries with the same SONAMEs that define each missing symbol as a function returning 0.
A child process imports it that way and lists, per class and enum, every member with its
kind and (from the pybind11 signature) its return type: the exact names, with their owner,
not a ``strings`` search. Wheels and tables are cached in ``$EVIT_ROS_TEST_DOWNLOADS``
(default ``~/.cache/evit_ros/test-downloads``), so a machine downloads each wheel once.

:class:`StandInModule` is a ``tensorrt`` module built from one release's table: code run
against it gets the classes, enums and members of that release, typed as the release types
them, and every name it touches is recorded as ``Class.member``. A name the release lacks
is recorded as missing and the code goes on (so one run lists every miss), except when the
code probes for it with ``getattr(obj, name, default)`` or ``hasattr``: the probe gets the
``AttributeError`` the real module raises, and is not a miss.

Run ``python test/tensorrt_surface.py`` for the table of the names the backend cares about.
"""

import dis
import json
import os
from pathlib import Path
import re
import shutil
import subprocess
import sys
import types
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple
import zipfile

from evit_ros.download import sha256_of


class Wheel(NamedTuple):
    """One release's bindings wheel on PyPI, pinned by file name and sha256."""

    project: str
    version: str
    platform: str
    filename: str
    sha256: str


#: the releases checked: JetPack 6.0 (8.6), JetPack 6.1/6.2 (10.3), current x86 (11.4).
WHEELS = {
    '8.6.1': Wheel('tensorrt-bindings', '8.6.1', 'manylinux_2_17_x86_64',
                   'tensorrt_bindings-8.6.1-cp311-none-manylinux_2_17_x86_64.whl',
                   '705cfab5c60f0bed7d939559d880165a761bd9ac0f4203004948a760eef99838'),
    '10.3.0': Wheel('tensorrt-cu12-bindings', '10.3.0', 'manylinux_2_17_x86_64',
                    'tensorrt_cu12_bindings-10.3.0-cp311-none-manylinux_2_17_x86_64.whl',
                    '59ace22d7f2ca1e9dcde2cb0cb5916912cb3cd5a9d72dd7852be0160d9b3a0ee'),
    '11.4.0.106': Wheel('tensorrt-cu12-bindings', '11.4.0.106', 'manylinux_2_28_x86_64',
                        'tensorrt_cu12_bindings-11.4.0.106-cp311-none-manylinux_2_28_x86_64.whl',
                        'e2ab48f316bbff6a7a44a30e94a9ceb0d2cf6645ff39feadecfa68d7cb7a94bf'),
}
#: bump when the table format or the reading changes: cached tables are then re-read.
TABLE_FORMAT = 1
#: the names the README table shows, as ``Owner.member``.
REPORTED = (
    'BuilderFlag.FP16', 'BuilderFlag.INT8', 'BuilderFlag.TF32',
    'BuilderFlag.OBEY_PRECISION_CONSTRAINTS', 'BuilderFlag.PREFER_PRECISION_CONSTRAINTS',
    'BuilderFlag.STRICT_TYPES', 'NetworkDefinitionCreationFlag.STRONGLY_TYPED',
    'NetworkDefinitionCreationFlag.EXPLICIT_BATCH', 'IBuilderConfig.int8_calibrator',
    'tensorrt.IInt8EntropyCalibrator2', 'Builder.platform_has_fast_fp16',
    'Builder.build_serialized_network', 'Builder.create_optimization_profile',
    'IBuilderConfig.set_memory_pool_limit', 'IBuilderConfig.add_optimization_profile',
    'IBuilderConfig.clear_flag', 'IBuilderConfig.progress_monitor',
    'IExecutionContext.execute_async_v2', 'IExecutionContext.execute_async_v3',
    'IExecutionContext.set_tensor_address', 'IExecutionContext.set_input_shape',
    'ICudaEngine.num_io_tensors', 'ICudaEngine.get_tensor_profile_shape',
    'ILayer.precision', 'ILayer.set_output_type')


class SurfaceUnavailable(Exception):
    """The wheel or the tools to read it are not at hand; the message says which."""


def downloads_dir() -> Path:
    """Return the persistent test-download cache (``$EVIT_ROS_TEST_DOWNLOADS``)."""
    default = Path.home() / '.cache' / 'evit_ros' / 'test-downloads'
    return Path(os.environ.get('EVIT_ROS_TEST_DOWNLOADS', default)) / 'tensorrt-bindings'


def fetch_wheel(wheel: Wheel, cache: Path) -> Path:
    """Return the verified file of ``wheel`` in ``cache``, downloading it with pip once.

    :raises SurfaceUnavailable: when PyPI cannot be reached or the file does not verify.
    """
    path = cache / wheel.filename
    if path.is_file():
        if sha256_of(path) == wheel.sha256:
            return path
        path.unlink()  # damaged or foreign: never hand pip a file to reuse
    cache.mkdir(parents=True, exist_ok=True)
    platform = [] if wheel.platform == 'any' else ['--platform', wheel.platform]
    command = [sys.executable, '-m', 'pip', 'download', '--no-deps', '--only-binary=:all:',
               '--python-version', '3.11', *platform, '--quiet',
               '--disable-pip-version-check', '-d', str(cache),
               f'{wheel.project}=={wheel.version}']
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if result.returncode != 0 or not path.is_file():
        last = (result.stderr.strip().splitlines() or ['no output'])[-1]
        raise SurfaceUnavailable(f'cannot download {wheel.filename} from PyPI: {last}')
    if sha256_of(path) != wheel.sha256:
        path.unlink()
        raise SurfaceUnavailable(f'{wheel.filename} from PyPI does not match its sha256')
    return path


def _tool_lines(command: List[str]) -> List[str]:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise SurfaceUnavailable(f'reading the bindings needs {command[0]} (binutils / gcc)')
    if result.returncode != 0:
        raise SurfaceUnavailable(f'{command[0]} failed: {result.stderr.strip()[:200]}')
    return result.stdout.splitlines()


def stand_in_libraries(extension: Path, folder: Path) -> Path:
    """Build stand-ins for the TensorRT libraries ``extension`` links against.

    Every undefined symbol that no library of this process provides becomes a C function
    returning 0, compiled into one shared library copied under each SONAME the extension
    names. Returns the folder to put on ``LD_LIBRARY_PATH``.
    """
    import ctypes
    process = ctypes.CDLL(None)
    missing = []
    for line in _tool_lines(['nm', '-D', '--undefined-only', str(extension)]):
        parts = line.split()
        if len(parts) == 2 and parts[0] == 'U' and '@' not in parts[1]:
            name = parts[1]
            if name.isidentifier() and not hasattr(process, name):
                missing.append(name)
    needed = [m.group(1) for line in _tool_lines(['readelf', '-d', str(extension)])
              for m in [re.search(r'\(NEEDED\).*\[(libnv[^\]]+)\]', line)] if m]
    if not missing or not needed:
        raise SurfaceUnavailable(f'{extension} names no TensorRT library symbols')
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / 'stand_in.c'
    source.write_text(''.join(f'void *{name}(void) {{ return 0; }}\n' for name in missing))
    built = folder / 'libstand_in.so'
    compiler = shutil.which('gcc') or shutil.which('cc')
    if compiler is None:
        raise SurfaceUnavailable('reading the bindings needs a C compiler (gcc)')
    _tool_lines([compiler, '-shared', '-fPIC', '-o', str(built), str(source)])
    for soname in needed:
        shutil.copyfile(built, folder / soname)
    return folder


# Runs in a child process (a crash there fails one read, not the tests): imports the
# bindings package and prints every class and enum with its members as JSON.
_READER = r'''
import inspect, json, re, sys
import importlib
trt = importlib.import_module(sys.argv[1])
LABEL, PREFIX = sys.argv[2], sys.argv[3]

SIGNATURE = re.compile(r'\)\s*->\s*(.+)$')


def returns(doc):
    for line in (doc or '').splitlines():
        match = SIGNATURE.search(line.strip())
        if match:
            text = match.group(1).strip()
            return re.sub(r'\btensorrt(?:_bindings)?\.tensorrt\.', '', text)
    return None


classes = {}


def read_class(name, cls):
    members = {}
    classes[name] = members
    values = getattr(cls, '__members__', None)
    for member in dir(cls):
        if member.startswith('__') and member != '__init__':
            continue
        static = inspect.getattr_static(cls, member)
        if values is not None and member in values:
            members[member] = {'kind': 'value'}
        elif isinstance(static, property):
            members[member] = {'kind': 'property', 'returns': returns(static.fget.__doc__),
                               'settable': static.fset is not None}
        elif isinstance(static, type):
            members[member] = {'kind': 'class', 'returns': name + '.' + member}
            read_class(name + '.' + member, static)
        elif callable(static) or type(static).__name__ == 'instancemethod':
            members[member] = {'kind': 'method', 'returns': returns(getattr(cls, member).__doc__)}
        else:
            members[member] = {'kind': 'attribute', 'returns': type(static).__name__}
    if values is not None:
        members['__enum__'] = {'kind': 'enum', 'values': list(values)}


module = {}
for name in dir(trt):
    value = getattr(trt, name)
    if isinstance(value, type) and value.__module__.startswith(PREFIX):
        module[name] = {'kind': 'class', 'returns': name}
        read_class(name, value)
    elif callable(value):
        module[name] = {'kind': 'method', 'returns': returns(value.__doc__)}
    elif type(value).__module__.startswith(PREFIX) and hasattr(value, 'name'):
        enum = type(value).__name__
        module[name] = {'kind': 'value', 'returns': enum, 'member': value.name}
    else:
        module[name] = {'kind': 'attribute', 'returns': type(value).__name__}
version = getattr(trt, '__version__', None) or sys.argv[4]
print(json.dumps({'name': LABEL, 'version': version, 'module': module, 'classes': classes}))
'''


_READ: Dict[Path, dict] = {}


def read_surface(version: str, cache: Optional[Path] = None) -> dict:
    """Return the table of names ``version``'s bindings define (cached as JSON).

    :raises SurfaceUnavailable: when the wheel cannot be had or read here.
    """
    cache = cache or downloads_dir()
    table_path = cache / f'surface-{version}-v{TABLE_FORMAT}.json'
    if table_path in _READ:
        return _READ[table_path]
    if table_path.is_file():
        return _READ.setdefault(table_path, json.loads(table_path.read_text()))
    if sys.version_info[:2] != (3, 11):
        raise SurfaceUnavailable('the pinned bindings wheels are for CPython 3.11')
    wheel = WHEELS[version]
    unpacked = cache / f'unpacked-{version}'
    if not (unpacked / 'tensorrt_bindings' / 'tensorrt.so').is_file():
        with zipfile.ZipFile(fetch_wheel(wheel, cache)) as archive:
            archive.extractall(unpacked)
    libraries = stand_in_libraries(unpacked / 'tensorrt_bindings' / 'tensorrt.so',
                                   cache / f'stand-in-libs-{version}')
    env = dict(os.environ, PYTHONPATH=str(unpacked), LD_LIBRARY_PATH=str(libraries))
    result = subprocess.run([sys.executable, '-c', _READER, 'tensorrt_bindings', 'tensorrt',
                             'tensorrt', version], capture_output=True, text=True,
                            env=env, timeout=120, cwd=str(cache))
    if result.returncode != 0:
        raise SurfaceUnavailable(f'the {version} bindings did not import against stand-in '
                                 f'libraries (exit {result.returncode}): '
                                 f'{result.stderr.strip()[-300:]}')
    table = json.loads(result.stdout)
    if table['version'] != version:
        raise SurfaceUnavailable(f'{wheel.filename} says it is {table["version"]}')
    shutil.rmtree(unpacked, ignore_errors=True)  # the table is all that is needed now
    tmp = table_path.with_suffix('.tmp')
    tmp.write_text(json.dumps(table, indent=1, sort_keys=True))
    tmp.replace(table_path)
    return _READ.setdefault(table_path, table)


def has_name(table: dict, name: str) -> bool:
    """Tell whether ``name`` exists in ``table``.

    :param name: ``Class.member``, ``Outer.Inner.member`` or ``tensorrt.name``.
    """
    owner, _, member = name.rpartition('.')
    if owner == table.get('name', 'tensorrt'):
        return member in table['module']
    return member in table['classes'].get(owner, {})


# --- cuda-python, the GPU buffer library of the TensorRT backend --------------------------

#: cuda-bindings releases checked (CUDA 12: JetPack 6 and x86; CUDA 13: JetPack 7 and x86),
#: with the cuda-pathfinder they import. Unlike TensorRT, they import without a GPU.
CUDA_WHEELS = {
    '12.9.4': Wheel('cuda-bindings', '12.9.4', 'manylinux_2_28_x86_64',
                    'cuda_bindings-12.9.4-cp311-cp311-manylinux_2_24_x86_64.'
                    'manylinux_2_28_x86_64.whl',
                    'c912a3d9e6b6651853eed8eed96d6800d69c08e94052c292fec3f282c5a817c9'),
    '13.5.0': Wheel('cuda-bindings', '13.5.0', 'manylinux_2_28_x86_64',
                    'cuda_bindings-13.5.0-cp311-cp311-manylinux_2_24_x86_64.'
                    'manylinux_2_28_x86_64.whl',
                    '08b7e8d674c3266facb00453a7e34ea7d3ea965c2f594bb728f269f45f39fbe2'),
}
CUDA_PATHFINDER = Wheel('cuda-pathfinder', '1.9.1', 'any',
                        'cuda_pathfinder-1.9.1-py3-none-any.whl',
                        'b743c132f90ad2d1e71d43fd28f31ebcde518f943e50fd44aca62b2a80d5230d')


def read_cuda_surface(version: str, cache: Optional[Path] = None) -> dict:
    """Return the names ``cuda.bindings.runtime`` of cuda-bindings ``version`` defines.

    The module's table is labelled ``cudart`` (``cudart.cudaMalloc``, ``cudaError_t.cudaSuccess``).

    :raises SurfaceUnavailable: when the wheels cannot be had or imported here.
    """
    cache = cache or downloads_dir().parent / 'cuda-bindings'
    table_path = cache / f'surface-{version}-v{TABLE_FORMAT}.json'
    if table_path in _READ:
        return _READ[table_path]
    if table_path.is_file():
        return _READ.setdefault(table_path, json.loads(table_path.read_text()))
    if sys.version_info[:2] != (3, 11):
        raise SurfaceUnavailable('the pinned cuda-bindings wheels are for CPython 3.11')
    unpacked = cache / f'unpacked-{version}'
    if not (unpacked / 'cuda' / 'bindings').is_dir():
        for wheel in (CUDA_WHEELS[version], CUDA_PATHFINDER):
            with zipfile.ZipFile(fetch_wheel(wheel, cache)) as archive:
                archive.extractall(unpacked)
    env = dict(os.environ, PYTHONPATH=str(unpacked))
    result = subprocess.run([sys.executable, '-c', _READER, 'cuda.bindings.runtime', 'cudart',
                             'cuda.bindings', version], capture_output=True, text=True,
                            env=env, timeout=120, cwd=str(cache))
    if result.returncode != 0:
        raise SurfaceUnavailable(f'cuda-bindings {version} did not import (exit '
                                 f'{result.returncode}): {result.stderr.strip()[-300:]}')
    table = json.loads(result.stdout)
    shutil.rmtree(unpacked, ignore_errors=True)
    tmp = table_path.with_suffix('.tmp')
    tmp.write_text(json.dumps(table, indent=1, sort_keys=True))
    tmp.replace(table_path)
    return _READ.setdefault(table_path, table)


# --- the recording stand-in -------------------------------------------------------------

_PLAIN_ACCESS = {'LOAD_ATTR', 'LOAD_METHOD', 'STORE_ATTR', 'DELETE_ATTR'}


def _is_probe(frame) -> bool:
    """Tell whether the attribute access running in ``frame`` is ``getattr``/``hasattr``.

    A plain ``obj.name`` runs a ``LOAD_ATTR`` / ``LOAD_METHOD`` / ``STORE_ATTR`` instruction;
    ``getattr(obj, 'name', default)`` and ``hasattr`` run a call.
    """
    for instruction in dis.get_instructions(frame.f_code):
        if instruction.offset == frame.f_lasti:
            return instruction.opname not in _PLAIN_ACCESS
    return False


class Recorder:
    """What a run touched: every ``Owner.member`` used and the ones the release lacks."""

    def __init__(self):
        self.used: Dict[str, str] = {}
        self.missing: Dict[str, str] = {}

    def note(self, name: str, present: bool, frame) -> None:
        """Record ``name`` as used (and missing unless ``present``) from ``frame``."""
        where = f'{Path(frame.f_code.co_filename).name}:{frame.f_lineno}'
        self.used.setdefault(name, where)
        if not present:
            self.missing.setdefault(name, where)


class EnumValue:
    """A member of a TensorRT enum: compares by enum and name, converts to its index."""

    def __init__(self, enum: str, name: str, index: int):
        self.enum, self.name, self.value = enum, name, index

    def __int__(self):
        return self.value

    __index__ = __int__

    def __eq__(self, other):
        return (isinstance(other, EnumValue) and (other.enum, other.name)
                == (self.enum, self.name))

    def __hash__(self):
        return hash((self.enum, self.name))

    def __repr__(self):
        return f'{self.enum.rsplit(".", 1)[-1]}.{self.name}'


class Anything:
    """A value of a type the table does not describe: every use of it is allowed."""

    def __init__(self, label: str):
        self._label = label

    def __getattr__(self, name):
        if name.startswith('__'):
            raise AttributeError(name)
        return Anything(f'{self._label}.{name}')

    def __call__(self, *args, **kwargs):
        return Anything(f'{self._label}()')

    def __int__(self):
        return 0

    __index__ = __int__

    def __bool__(self):
        return True

    def __iter__(self):
        return iter(())

    def __repr__(self):
        return f'<anything {self._label}>'


#: how a stand-in object answers a member: ``f(obj, *args)`` for methods, ``f(obj)`` for
#: properties; keyed by ``Class.member``. Members without one answer by their return type.
Behaviour = Dict[str, Callable]

_SCALARS = {'bool': True, 'int': 0, 'float': 1.0, 'str': 'stand-in', 'None': None,
            'bytes': b'stand-in', 'SupportsInt': 0, 'typing.SupportsInt': 0}


class StandInModule(types.ModuleType):
    """A module with one release's names (``tensorrt`` or CUDA's), recording every name used.

    :param table: from :func:`read_surface` (or :func:`read_cuda_surface`).
    :param behaviour: answers for the members the driven code depends on (e.g. an engine
        with one input and one output), keyed by ``Class.member`` (``tensorrt.name`` for the
        module's own functions).
    :param others: tables of other releases; a name this release lacks still answers as
        they type it, so the run goes on as far as the code would on a release that has it.
    :param call: the answer of a function the behaviour and signature say nothing about,
        given its ``Owner.member``.
    """

    def __init__(self, table: dict, behaviour: Optional[Behaviour] = None, others=(),
                 call: Optional[Callable[[str], object]] = None):
        super().__init__(table.get('name', 'tensorrt'))
        self.__version__ = table['version']
        self._label = table.get('name', 'tensorrt')
        self._table = table
        self._behaviour = dict(behaviour or {})
        self._others = list(others)
        self._call = call
        self._record = Recorder()
        self._classes: Dict[str, type] = {}

    @property
    def recorder(self) -> Recorder:
        """The names used so far."""
        return self._record

    def behave(self, behaviour: Behaviour) -> None:
        """Add answers for members (see the class's ``behaviour``)."""
        self._behaviour.update(behaviour)

    def __getattr__(self, name):
        if name.startswith('__'):
            raise AttributeError(name)
        return self._member(self._label, name, None, sys._getframe(1))

    def _members(self, table: dict, owner: str) -> Optional[dict]:
        if owner == self._label:
            return table['module']
        return table['classes'].get(owner)

    def _member(self, owner: str, name: str, instance, frame):
        """Resolve ``owner.name`` (on ``instance`` when not None) for the code in ``frame``."""
        info = (self._members(self._table, owner) or {}).get(name)
        if info is None and _is_probe(frame):
            raise AttributeError(f'stand-in {self._label} {self.__version__}: {owner} has '
                                 f'no {name!r}')
        self._record.note(f'{owner}.{name}', info is not None, frame)
        if info is None:
            info = next((members[name] for members in (self._members(t, owner)
                                                       for t in self._others)
                         if members and name in members), None)
        key = f'{owner}.{name}'
        if info is None:
            return Anything(key)
        kind = info['kind']
        if kind == 'class':
            return self.stand_in_class(info['returns'])
        if kind == 'value':
            if owner == self._label:
                return self._enum_value(info['returns'], info['member'])
            return self._enum_value(owner, name)
        if kind == 'method':
            return self._method(key, info.get('returns'), instance)
        if key in self._behaviour:
            return self._behaviour[key](instance)
        return self.value_of(info.get('returns'), key)

    def _method(self, key: str, returns: Optional[str], instance):
        behaviour = self._behaviour.get(key)

        def call(*args, **kwargs):
            if behaviour is not None:
                return behaviour(instance, *args, **kwargs)
            if returns is None and self._call is not None:
                return self._call(key)
            return self.value_of(returns, key)
        call.__name__ = key
        return call

    def _enum_value(self, enum: str, name: str) -> EnumValue:
        values = self._table['classes'].get(enum, {}).get('__enum__', {}).get('values', [])
        return EnumValue(enum, name, values.index(name) if name in values else 0)

    def value_of(self, returns: Optional[str], label: str):
        """Return a stand-in value of the type named by a pybind11 signature."""
        if returns is None:
            return Anything(label)
        text = re.sub(r'^(typing\.)?Optional\[(.*)\]$', r'\2', returns.strip())
        if text in _SCALARS:
            return _SCALARS[text]
        if re.match(r'^(typing\.)?(List|list)\[', text):
            return []
        enum = self._table['classes'].get(text, {}).get('__enum__')
        if enum is not None:
            return EnumValue(text, enum['values'][0], 0)
        if text in self._table['classes']:
            return self.stand_in_class(text)()
        return Anything(label)

    def stand_in_class(self, name: str) -> type:
        """Return the stand-in Python class for the class ``name`` (subclassable)."""
        if name not in self._classes:
            self._classes[name] = _make_class(self, name)
        return self._classes[name]

    def make(self, class_name: str, **fields):
        """Return a stand-in instance of class ``class_name``.

        Its members named in ``fields`` answer with the given values (callables for methods).
        """
        obj = self.stand_in_class(class_name)()
        obj.__dict__['_fields'].update(fields)
        return obj


def _make_class(module: StandInModule, name: str) -> type:
    """Build the stand-in class for ``name``.

    Member lookups on the class and on its instances go through ``module``; subclasses keep
    their own attributes.
    """
    members = module._table['classes'].get(name, {})

    class Meta(type):
        def __getattr__(cls, member):
            if member.startswith('__'):
                raise AttributeError(member)
            return module._member(cls._stand_in_name, member, None, sys._getframe(1))

    def __init__(obj, *args, **kwargs):
        # Subclasses (loggers, calibrators, progress monitors) call the base __init__
        # the way TensorRT's documentation shows.
        object.__setattr__(obj, '_fields', {})

    def __getattr__(obj, member):
        if member.startswith('__'):
            raise AttributeError(member)
        fields = obj.__dict__.get('_fields', {})
        owner = type(obj)._stand_in_name
        if member in fields:
            present = member in module._table['classes'].get(owner, {})
            module._record.note(f'{owner}.{member}', present, sys._getframe(1))
            return fields[member]
        return module._member(owner, member, obj, sys._getframe(1))

    def __setattr__(obj, member, value):
        if type(obj) is not module._classes[name] or member.startswith('_'):
            object.__setattr__(obj, member, value)  # a subclass's own attribute
            return
        info = members.get(member)
        settable = info is not None and info.get('settable', True)
        module._record.note(f'{name}.{member}', settable, sys._getframe(1))
        obj.__dict__.setdefault('_fields', {})[member] = value

    def __int__(obj):
        return 0

    return Meta(name.rsplit('.', 1)[-1], (), {
        '_stand_in_name': name, '__init__': __init__, '__getattr__': __getattr__,
        '__setattr__': __setattr__, '__int__': __int__, '__index__': __int__})


def stand_in_tensorrt(version: str, behaviour: Optional[Behaviour] = None) -> StandInModule:
    """Return a recording ``tensorrt`` module with the names of release ``version``.

    :raises SurfaceUnavailable: when the release's table cannot be read here.
    """
    others = [read_surface(v) for v in WHEELS if v != version]
    return StandInModule(read_surface(version), behaviour, others)


def name_table(versions=tuple(WHEELS), names=REPORTED) -> List[Tuple[str, List[bool]]]:
    """Return ``(name, [present in each version])`` for ``names``."""
    tables = [read_surface(version) for version in versions]
    return [(name, [has_name(table, name) for table in tables]) for name in names]


def markdown_table(rows: List[Tuple[str, List[bool]]]) -> List[str]:
    """Return :func:`name_table`'s rows as the lines of a Markdown table."""
    lines = ['| name | ' + ' | '.join(WHEELS) + ' |', '|---|' + '---|' * len(WHEELS)]
    for name, present in rows:
        lines.append(f'| `{name}` | ' + ' | '.join('yes' if p else '**no**' for p in present)
                     + ' |')
    return lines


def main() -> int:
    """Print which of :data:`REPORTED` each release defines, as a Markdown table."""
    try:
        rows = name_table()
    except SurfaceUnavailable as exc:
        print(f'cannot read the bindings: {exc}')
        return 2
    print('\n'.join(markdown_table(rows)))
    return 0


if __name__ == '__main__':
    sys.exit(main())
