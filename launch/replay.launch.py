"""Replay a rosbag2 recording through the segmentation node on the bag's clock.

    ros2 launch evit_ros replay.launch.py bag:=/data/drive_bag camera:=/camera/image_raw \
        rate:=0.5 model:=b0-cityscapes

The bag starts playing only once the node is ready: the node is a lifecycle node that
configures (loads the model, warms up) and activates itself (``autostart``), and activation
is when it subscribes to the camera. ``ros2 bag play`` is started by the node's transition
to ``active``: transition events are not kept for late subscribers, so the node first waits
(``autostart_listener_timeout``, 10 s here) until this launch's subscription to them is
discovered. The player then waits ``delay`` seconds for DDS to match its publishers with the node,
so the first frames of the bag are not lost.

``ros2 bag play --clock`` publishes ``/clock`` from the recording and the node runs with
``use_sim_time``, so its pipeline latency and diagnostics stamps are in bag time. Record the
outputs with ``ros2 bag record /segmentation_node/label_map /diagnostics`` in another shell,
or evaluate offline with ``evit-ros replay``.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import (DeclareLaunchArgument, ExecuteProcess, LogInfo, OpaqueFunction,
                            RegisterEventHandler, SetEnvironmentVariable)
from launch.substitutions import EnvironmentVariable, LaunchConfiguration
from launch_ros.actions import LifecycleNode
from launch_ros.event_handlers import OnStateTransition

PACKAGE = 'evit_ros'
EXECUTABLE = 'segmentation_node'


def _share(*parts):
    return os.path.join(get_package_share_directory(PACKAGE), *parts)


def default_profile():
    """Return the Fast DDS profile the user exported, else the large-image one."""
    ours = _share('config', 'fastdds_large_images.xml')
    return EnvironmentVariable('FASTDDS_DEFAULT_PROFILES_FILE', default_value=EnvironmentVariable(
        'FASTRTPS_DEFAULT_PROFILES_FILE', default_value=ours))


def launch_setup(context, *args, **kwargs):
    def value(name):
        return LaunchConfiguration(name).perform(context)
    parameters = []
    if value('preset'):
        parameters.append(_share('config', 'presets', value('preset') + '.yaml'))
    if value('params_file'):
        parameters.append(value('params_file'))
    # The player starts on the transition to active: the node waits (up to 10 s) until
    # this launch's transition_event subscription is discovered, so it cannot be missed.
    overrides = {'model': value('model'), 'backend': value('backend'), 'use_sim_time': True,
                 'autostart': True, 'autostart_listener_timeout': 10.0}
    parameters.append({k: v for k, v in overrides.items() if v != ''})
    node = LifecycleNode(
        package=PACKAGE, executable=EXECUTABLE, name='segmentation_node', namespace='',
        parameters=parameters, remappings=[('~/image', value('camera'))], output='screen',
        emulate_tty=True)
    play = ExecuteProcess(
        cmd=['ros2', 'bag', 'play', '--clock', '--delay', value('delay'),
             '--rate', value('rate'), value('bag')],
        output='screen')
    start_when_active = RegisterEventHandler(OnStateTransition(
        target_lifecycle_node=node, goal_state='active',
        entities=[LogInfo(msg='segmentation_node is active: playing the bag'), play]))
    return [start_when_active, node]


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument('bag', description='rosbag2 folder (sqlite3 or mcap) to play'),
        DeclareLaunchArgument('camera', default_value='/camera/image_raw',
                              description='image topic recorded in the bag'),
        DeclareLaunchArgument('rate', default_value='1.0',
                              description='playback rate; lower it when the model is slower '
                              'than the camera and every frame must be segmented'),
        DeclareLaunchArgument('delay', default_value='1.0',
                              description='seconds between the start of the player and its '
                              'first message, for DDS discovery'),
        DeclareLaunchArgument('preset', default_value='',
                              description='model preset from config/presets, e.g. '
                              'b0-cityscapes; loaded before params_file'),
        DeclareLaunchArgument('params_file', default_value='',
                              description="your ROS params file; its values win over the "
                              "preset's; '' = none (the node's defaults)"),
        DeclareLaunchArgument('model', default_value='',
                              description="registry model; '' = from the preset / params file"),
        DeclareLaunchArgument('backend', default_value='',
                              description="auto | tensorrt | onnxruntime | torch; '' = from "
                              'the preset / params file'),
        DeclareLaunchArgument('fastdds_profile', default_value=default_profile(),
                              description='Fast DDS profile; default: yours when '
                              'FASTDDS_DEFAULT_PROFILES_FILE is set, else the large-image one'),
        SetEnvironmentVariable('FASTDDS_DEFAULT_PROFILES_FILE',
                               LaunchConfiguration('fastdds_profile')),
        OpaqueFunction(function=launch_setup),
    ])
