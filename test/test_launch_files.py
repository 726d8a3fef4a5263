"""Launch files, params files, presets and the Fast DDS profile, checked without ``launch``.

``launch`` and ``launch_ros`` cannot be installed here, so the launch files are read as
source (``ast``): every parameter they set must be declared by the node, every topic they
remap must be one the node uses, every config file they name must exist, and package and
executable names must match setup.py. Params files are loaded by the real rcl parser.
"""

import ast
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from ros_harness import next_domain_id

from evit_ros.model.registry import get_entry, MODELS
from evit_ros.ros.parameters import check_settings, PARAMETERS, SPECS
from evit_ros.ros.segmentation_node import TOPICS

LAUNCH_FILES = sorted((REPO / 'launch').glob('*.launch.py'))
ROS_OWN_PARAMETERS = {'use_sim_time'}
NODE_KEY = '/**/segmentation_node'


def setup_names():
    """Return (package name, console script names) read from setup.py."""
    tree = ast.parse((REPO / 'setup.py').read_text())
    constants = module_constants(tree)
    scripts = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and ' = ' in \
                node.value and ':' in node.value:
            scripts.append(node.value.split('=')[0].strip())
    return constants['PACKAGE'], scripts


def module_constants(tree):
    """Return module-level ``NAME = 'string'`` assignments."""
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    found[target.id] = node.value.value
    return found


class LaunchSource:
    """What a launch file sets, read from its syntax tree."""

    def __init__(self, path: Path):
        self.path = path
        self.tree = ast.parse(path.read_text(), str(path))
        self.constants = module_constants(self.tree)
        self.calls = [n for n in ast.walk(self.tree) if isinstance(n, ast.Call)]

    def resolve(self, node):
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            return self.constants.get(node.id)
        return None

    def calls_to(self, name):
        return [c for c in self.calls if (getattr(c.func, 'id', None) or
                                          getattr(c.func, 'attr', None)) == name]

    def keywords(self, name):
        return [self.resolve(k.value) for c in self.calls for k in c.keywords if k.arg == name]

    def parameter_names(self):
        """Keys of every dict literal with string keys (the launch files' parameter dicts)."""
        names = set()
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Dict) and node.keys:
                names |= {k.value for k in node.keys if isinstance(k, ast.Constant)}
        return names

    def remapped_topics(self):
        topics = []
        for call in self.calls:
            for keyword in call.keywords:
                if keyword.arg == 'remappings':
                    for element in ast.walk(keyword.value):
                        if isinstance(element, ast.Tuple):
                            topics.append(self.resolve(element.elts[0]))
        return topics

    def declared_arguments(self):
        return {self.resolve(c.args[0]) for c in self.calls_to('DeclareLaunchArgument')}

    def used_arguments(self):
        calls = self.calls_to('LaunchConfiguration') + self.calls_to('value')
        return {c.args[0].value for c in calls if c.args and isinstance(c.args[0], ast.Constant)}

    def share_paths(self):
        """Constant leading parts of every ``_share(...)`` call."""
        paths = []
        for call in self.calls_to('_share'):
            parts = []
            for arg in call.args:
                if not isinstance(arg, ast.Constant):
                    break
                parts.append(arg.value)
            paths.append((parts, len(parts) == len(call.args)))
        return paths


@pytest.fixture(params=LAUNCH_FILES, ids=lambda p: p.name)
def launch(request):
    return LaunchSource(request.param)


def test_the_three_launch_files_exist():
    assert [p.name for p in LAUNCH_FILES] == [
        'multi_camera.launch.py', 'replay.launch.py', 'segmentation.launch.py']


def test_package_and_executable_match_setup_py(launch):
    package, scripts = setup_names()
    assert set(launch.keywords('package')) == {package} == {'evit_ros'}
    assert set(launch.keywords('executable')) == {'segmentation_node'}
    assert 'segmentation_node' in scripts and 'evit-ros' in scripts
    assert set(launch.keywords('name')) == {'segmentation_node'}


def test_parameters_are_declared_by_the_node(launch):
    names = launch.parameter_names()
    assert {'model', 'backend', 'use_sim_time'} <= names
    assert names <= set(SPECS) | ROS_OWN_PARAMETERS, names - set(SPECS)


def test_remapped_topics_exist_in_the_node_interface(launch):
    topics = launch.remapped_topics()
    assert topics == ['~/image']
    assert set(topics) <= set(TOPICS)


def test_config_files_named_exist(launch):
    for parts, complete in launch.share_paths():
        path = REPO.joinpath(*parts)
        assert (path.is_file() if complete else path.is_dir()), path
    names = {p[-1] for p, complete in launch.share_paths() if complete}
    assert {'segmentation.yaml', 'fastdds_large_images.xml'} <= names


def test_arguments_used_are_declared_and_profile_is_set(launch):
    assert launch.used_arguments() <= launch.declared_arguments()
    assert {'backend', 'model', 'params_file', 'fastdds_profile'} <= launch.declared_arguments()
    env = launch.calls_to('SetEnvironmentVariable')
    assert [launch.resolve(c.args[0]) for c in env] == ['FASTDDS_DEFAULT_PROFILES_FILE']


def test_segmentation_launch_arguments():
    source = LaunchSource(REPO / 'launch' / 'segmentation.launch.py')
    assert {'camera', 'namespace', 'model', 'backend', 'params_file', 'use_sim_time',
            'preset'} <= source.declared_arguments()


def test_replay_launch_plays_the_bag_with_its_clock():
    source = LaunchSource(REPO / 'launch' / 'replay.launch.py')
    (process,) = source.calls_to('ExecuteProcess')
    cmd = next(k.value for k in process.keywords if k.arg == 'cmd')
    words = [source.resolve(e) for e in cmd.elts]
    assert words[:4] == ['ros2', 'bag', 'play', '--clock']
    sim_time = [v for node in ast.walk(source.tree) if isinstance(node, ast.Dict)
                for k, v in zip(node.keys, node.values)
                if isinstance(k, ast.Constant) and k.value == 'use_sim_time']
    assert [source.resolve(v) for v in sim_time] == [True]


def test_multi_camera_splits_the_camera_list():
    source = LaunchSource(REPO / 'launch' / 'multi_camera.launch.py')
    function = next(n for n in source.tree.body
                    if isinstance(n, ast.FunctionDef) and n.name == 'camera_names')
    scope = {}
    exec(compile(ast.Module([function], []), 'camera_names', 'exec'), scope)
    assert scope['camera_names']('front,rear') == ['front', 'rear']
    assert scope['camera_names']("['front', ' /left ']") == ['front', 'left']
    assert scope['camera_names']('') == []


def test_setup_py_installs_launch_and_config():
    text = (REPO / 'setup.py').read_text()
    assert "glob('launch/*.launch.py')" in text
    assert "glob('config/*.yaml') + glob('config/*.xml')" in text
    assert "glob('config/presets/*.yaml')" in text


def params_of(path):
    data = yaml.safe_load(path.read_text())
    assert list(data) == [NODE_KEY], 'match the node in any namespace'
    return data[NODE_KEY]['ros__parameters']


def test_segmentation_yaml_lists_every_parameter_with_its_default():
    params = params_of(REPO / 'config' / 'segmentation.yaml')
    # rcl's params-file parser reads an empty list as "not set": `cameras: []` is shown
    # as a commented example instead.
    listed = [spec for spec in PARAMETERS if spec.default != ()]
    text = (REPO / 'config' / 'segmentation.yaml').read_text()
    assert '    # cameras: [' in text
    assert list(params) == [spec.name for spec in listed]
    for spec in listed:
        assert params[spec.name] == spec.default and type(params[spec.name]) is \
            type(spec.default), spec.name
    lines = text.splitlines()
    for spec in listed:   # a comment right above each parameter (or its pair)
        index = next(i for i, line in enumerate(lines) if line.strip().startswith(spec.name))
        assert lines[index - 1].strip().startswith('#') or \
            lines[index - 1].strip().startswith('network_height'), spec.name


@pytest.mark.parametrize('model', list(MODELS))
def test_preset_of_every_model(model):
    path = REPO / 'config' / 'presets' / f'{model}.yaml'
    params = params_of(path)
    assert params['model'] == model
    assert (params['network_height'], params['network_width']) == get_entry(model).input_size
    values = {spec.name: spec.default for spec in PARAMETERS}
    values.update(params)
    assert check_settings(values).model == model


def test_params_files_load_with_the_real_rcl_parser():
    """rcl parses each file and applies it to a node in a namespace."""
    import rclpy
    files = [REPO / 'config' / 'segmentation.yaml'] + sorted(
        (REPO / 'config' / 'presets').glob('*.yaml'))
    context = rclpy.Context()
    args = ['--ros-args']
    for path in files[:2]:
        args += ['--params-file', str(path)]
    rclpy.init(args=args, context=context, domain_id=next_domain_id())
    try:
        node = rclpy.create_node('segmentation_node', namespace='/front', context=context,
                                 automatically_declare_parameters_from_overrides=True)
        expected = params_of(files[0])
        expected.update(params_of(files[1]))     # the later file wins
        for name, value in expected.items():
            assert node.get_parameter(name).value == value, name
        node.destroy_node()
    finally:
        context.try_shutdown()


def test_fastdds_profile_raises_the_shared_memory_segment():
    root = ElementTree.parse(REPO / 'config' / 'fastdds_large_images.xml').getroot()
    ns = {'dds': 'http://www.eprosima.com'}
    transports = {t.find('dds:transport_id', ns).text: t for t in
                  root.iterfind('.//dds:transport_descriptor', ns)}
    kinds = {t.find('dds:type', ns).text: t for t in transports.values()}
    assert set(kinds) == {'SHM', 'UDPv4'}
    assert int(kinds['SHM'].find('dds:segment_size', ns).text) >= 64 * 1024 * 1024
    participant = root.find('.//dds:participant', ns)
    assert participant.get('is_default_profile') == 'true'
    assert participant.find('.//dds:useBuiltinTransports', ns).text == 'false'
    used = [t.text for t in participant.iterfind('.//dds:userTransports/dds:transport_id', ns)]
    assert sorted(used) == sorted(transports)


def test_resources_found_in_checkout_and_in_an_install(tmp_path, monkeypatch):
    from evit_ros.ros import resources
    monkeypatch.delenv('AMENT_PREFIX_PATH', raising=False)
    assert resources.fastdds_profile() == REPO / 'config' / 'fastdds_large_images.xml'
    assert set(resources.presets()) == set(MODELS)
    # An ament install: share/ament_index marks the package, share/evit_ros holds config.
    prefix = tmp_path / 'install'
    (prefix / 'share' / 'ament_index' / 'resource_index' / 'packages').mkdir(parents=True)
    (prefix / 'share' / 'ament_index' / 'resource_index' / 'packages' / 'evit_ros').touch()
    installed = prefix / 'share' / 'evit_ros' / 'config'
    (installed / 'presets').mkdir(parents=True)
    (installed / 'fastdds_large_images.xml').write_text('<dds/>')
    (installed / 'presets' / 'b0-cityscapes.yaml').write_text('{}')
    monkeypatch.setenv('AMENT_PREFIX_PATH', str(prefix))
    assert resources.fastdds_profile() == installed / 'fastdds_large_images.xml'
    assert resources.preset_file('b0-cityscapes') == installed / 'presets' / 'b0-cityscapes.yaml'
    # Files the install lacks still come from the next folder.
    assert resources.preset_file('l2-ade20k') == REPO / 'config' / 'presets' / 'l2-ade20k.yaml'
    environ = {}
    assert resources.use_large_image_profile(environ) == str(installed /
                                                             'fastdds_large_images.xml')
    assert environ == {'FASTDDS_DEFAULT_PROFILES_FILE': str(installed /
                                                            'fastdds_large_images.xml')}
    environ = {'FASTRTPS_DEFAULT_PROFILES_FILE': '/mine.xml'}   # the user's choice stays
    assert resources.use_large_image_profile(environ) == '/mine.xml'
    assert environ == {'FASTRTPS_DEFAULT_PROFILES_FILE': '/mine.xml'}
