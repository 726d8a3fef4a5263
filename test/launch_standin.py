"""A stand-in for the parts of ROS 2 ``launch`` / ``launch_ros`` our launch files use.

``launch`` and ``launch_ros`` are not on PyPI and cannot be installed here, so the tests run
the launch files' real ``generate_launch_description()`` against this small interpreter of
the same API (same module paths, class names and keyword arguments): it declares the
arguments, applies the environment actions, runs the ``OpaqueFunction``s, and records what
would be started at once and what only when an event handler fires. A node becomes the
command line ``launch_ros`` gives it (``--ros-args``, ``__node``/``__ns`` remaps, one
``--params-file`` per source in order, a dict written as a ``/**`` params file), which the
tests then run for real.
"""

import importlib.util
import sys
import tempfile
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml


class Substitution:
    """Base of the substitutions: ``perform(context)`` returns a string."""

    def perform(self, context) -> str:
        raise NotImplementedError


def perform(value, context) -> str:
    """Resolve a string, a substitution or a list of them, as ``launch`` does."""
    if isinstance(value, Substitution):
        return value.perform(context)
    if isinstance(value, (list, tuple)):
        return ''.join(perform(v, context) for v in value)
    return str(value)


class LaunchConfiguration(Substitution):
    """The value of a launch argument."""

    def __init__(self, variable_name, *, default=None):
        self.name = variable_name
        self.default = default

    def perform(self, context) -> str:
        if self.name in context.launch_configurations:
            return context.launch_configurations[self.name]
        if self.default is None:
            raise KeyError(f'launch configuration {self.name!r} does not exist')
        return perform(self.default, context)


class EnvironmentVariable(Substitution):
    """The value of an environment variable of the launch, or its default."""

    def __init__(self, name, *, default_value=''):
        self.name = name
        self.default_value = default_value

    def perform(self, context) -> str:
        found = context.environment.get(perform(self.name, context))
        return found if found else perform(self.default_value, context)


class Action:
    """Base of the actions: ``execute(context)`` may return more actions."""

    def execute(self, context) -> Optional[List['Action']]:
        return None


class DeclareLaunchArgument(Action):
    """A launch argument: the given value, else its default; an error if neither."""

    def __init__(self, name, *, default_value=None, description='', choices=None):
        self.name = name
        self.default_value = default_value
        self.description = description

    def execute(self, context):
        if self.name not in context.launch_configurations:
            if self.default_value is None:
                raise ValueError(f'required launch argument {self.name!r} was not given')
            context.launch_configurations[self.name] = perform(self.default_value, context)


class SetEnvironmentVariable(Action):
    """Set a variable in the environment of everything launched after it."""

    def __init__(self, name, value):
        self.name = name
        self.value = value

    def execute(self, context):
        context.environment[perform(self.name, context)] = perform(self.value, context)


class OpaqueFunction(Action):
    """Call ``function(context, *args, **kwargs)``; execute the actions it returns."""

    def __init__(self, *, function, args=None, kwargs=None):
        self.function = function
        self.args = args or []
        self.kwargs = kwargs or {}

    def execute(self, context):
        return self.function(context, *self.args, **self.kwargs)


class LogInfo(Action):
    """Log a line."""

    def __init__(self, *, msg):
        self.msg = msg

    def execute(self, context):
        context.log.append(perform(self.msg, context))


class ExecuteProcess(Action):
    """Start a process with the launch's environment."""

    def __init__(self, *, cmd, output='log', name=None, env=None, **kwargs):
        self.cmd = cmd
        self.env = env

    def command(self, context) -> List[str]:
        return [perform(word, context) for word in self.cmd]

    def execute(self, context):
        env = dict(context.environment)
        env.update({perform(k, context): perform(v, context) for k, v in (self.env or {}).items()})
        context.started.append(Started(self, self.command(context), env))


class Node(ExecuteProcess):
    """A ROS node: its executable with ``--ros-args`` built as ``launch_ros`` builds them."""

    def __init__(self, *, executable, package=None, name=None, namespace=None,
                 parameters=None, remappings=None, arguments=None, ros_arguments=None,
                 output='log', emulate_tty=False, **kwargs):
        super().__init__(cmd=[executable], output=output)
        self.package = package
        self.executable = executable
        self.node_name = name
        self.node_namespace = namespace
        self.parameters = parameters or []
        self.remappings = remappings or []
        self.arguments = arguments or []
        self.params_files: List[str] = []

    def parameter_files(self, context) -> List[str]:
        """Return one params file per source, in order (a dict is written as ``/**``)."""
        files = []
        for source in self.parameters:
            if isinstance(source, dict):
                values = {perform(k, context): v for k, v in source.items()}
                handle = tempfile.NamedTemporaryFile(
                    'w', prefix='launch_params_', suffix='.yaml', delete=False,
                    dir=context.tmp_dir)
                with handle:
                    yaml.safe_dump({'/**': {'ros__parameters': values}}, handle)
                files.append(handle.name)
            else:
                files.append(perform(source, context))
        return files

    def command(self, context) -> List[str]:
        args = [perform(a, context) for a in self.arguments] + ['--ros-args']
        if self.node_name:
            args += ['-r', f'__node:={perform(self.node_name, context)}']
        namespace = perform(self.node_namespace or '', context)
        if namespace:
            args += ['-r', '__ns:=' + ('/' + namespace.lstrip('/'))]
        self.params_files = self.parameter_files(context)
        for path in self.params_files:
            args += ['--params-file', path]
        for source, target in self.remappings:
            args += ['-r', f'{perform(source, context)}:={perform(target, context)}']
        return [perform(self.executable, context)] + args


class LifecycleNode(Node):
    """A managed node; ``name`` and ``namespace`` are required, as in Humble's launch_ros."""

    def __init__(self, *, name, namespace, **kwargs):
        super().__init__(name=name, namespace=namespace, **kwargs)


class OnStateTransition:
    """Fires its entities when the target lifecycle node reaches ``goal_state``."""

    def __init__(self, *, entities, target_lifecycle_node=None, transition=None,
                 start_state=None, goal_state=None, matcher=None, **kwargs):
        self.entities = entities if isinstance(entities, list) else [entities]
        self.target = target_lifecycle_node
        self.start_state = start_state
        self.goal_state = goal_state


class RegisterEventHandler(Action):
    """Register an event handler with the launch."""

    def __init__(self, event_handler):
        self.handler = event_handler

    def execute(self, context):
        context.handlers.append(self.handler)


class LaunchDescription:
    """The list of entities a launch file describes."""

    def __init__(self, initial_entities=None):
        self.entities = list(initial_entities or [])


@dataclass
class Started:
    """A process the launch started: the action, its command line and environment."""

    action: ExecuteProcess
    cmd: List[str]
    env: Dict[str, str]


@dataclass
class Context:
    """What a launch did: arguments, environment, processes, handlers, log."""

    launch_configurations: Dict[str, str]
    environment: Dict[str, str]
    tmp_dir: str
    started: List[Started] = field(default_factory=list)
    handlers: List[Any] = field(default_factory=list)
    log: List[str] = field(default_factory=list)

    def run(self, entities) -> None:
        """Execute entities in order, and the actions they return, depth first."""
        for entity in entities:
            more = entity.execute(self)
            if more:
                self.run(more)

    def transition(self, node: Node, goal_state: str) -> List[Started]:
        """Report that ``node`` reached ``goal_state``; return what the handlers started."""
        before = len(self.started)
        for handler in self.handlers:
            if isinstance(handler, OnStateTransition) and handler.target is node and \
                    handler.goal_state in (None, goal_state):
                self.run(handler.entities)
        return self.started[before:]

    def nodes(self) -> List[Started]:
        """Return the started ROS nodes."""
        return [s for s in self.started if isinstance(s.action, Node)]


def _modules(share_dir: Path) -> Dict[str, types.ModuleType]:
    def module(name, **names):
        made = types.ModuleType(name)
        made.__dict__.update(names)
        return made

    def get_package_share_directory(package):
        if package != 'evit_ros':
            raise LookupError(package)
        return str(share_dir)
    return {
        'launch': module('launch', LaunchDescription=LaunchDescription),
        'launch.actions': module(
            'launch.actions', DeclareLaunchArgument=DeclareLaunchArgument,
            ExecuteProcess=ExecuteProcess, LogInfo=LogInfo, OpaqueFunction=OpaqueFunction,
            RegisterEventHandler=RegisterEventHandler,
            SetEnvironmentVariable=SetEnvironmentVariable),
        'launch.substitutions': module(
            'launch.substitutions', EnvironmentVariable=EnvironmentVariable,
            LaunchConfiguration=LaunchConfiguration),
        'launch_ros': module('launch_ros'),
        'launch_ros.actions': module('launch_ros.actions', Node=Node,
                                     LifecycleNode=LifecycleNode),
        'launch_ros.event_handlers': module('launch_ros.event_handlers',
                                            OnStateTransition=OnStateTransition),
        'ament_index_python': module('ament_index_python'),
        'ament_index_python.packages': module(
            'ament_index_python.packages',
            get_package_share_directory=get_package_share_directory),
    }


def launch(path: Path, share_dir: Path, tmp_dir: Path, arguments: Dict[str, str] = None,
           environ: Dict[str, str] = None) -> Context:
    """Run the launch file at ``path`` with ``arguments`` in ``environ``; return the context.

    ``share_dir`` plays the package's installed share folder (the repository has the same
    ``config/`` and ``launch/`` layout).
    """
    saved = {name: sys.modules.get(name) for name in _modules(share_dir)}
    sys.modules.update(_modules(share_dir))
    try:
        spec = importlib.util.spec_from_file_location(path.name.replace('.', '_'), path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        description = module.generate_launch_description()
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old
    context = Context(launch_configurations=dict(arguments or {}),
                      environment=dict(environ or {}), tmp_dir=str(tmp_dir))
    context.run(description.entities)
    return context
