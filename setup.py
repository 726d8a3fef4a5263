"""Install evit_ros as an ament_python ROS 2 package or into a plain venv."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = 'evit_ros'

setup(
    name=PACKAGE,
    version='0.1.0',
    packages=find_packages(exclude=['test', 'test.*', 'bench', 'bench.*']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + PACKAGE]),
        ('share/' + PACKAGE, ['package.xml']),
        ('share/' + PACKAGE + '/launch', glob('launch/*.launch.py')),
        ('share/' + PACKAGE + '/config', glob('config/*.yaml') + glob('config/*.xml')),
        ('share/' + PACKAGE + '/config/presets', glob('config/presets/*.yaml')),
        ('share/' + PACKAGE + '/engines', ['engines/README.md']),
    ],
    install_requires=['setuptools', 'numpy', 'pyyaml'],
    zip_safe=True,
    maintainer='evit_ros developers',
    maintainer_email='dev@evit-ros.invalid',
    description='EfficientViT-Seg semantic segmentation for ROS 2',
    license='Apache-2.0',
    tests_require=['pytest'],
    entry_points={
        'console_scripts': [
            'evit-ros = evit_ros.cli:run',
            'segmentation_node = evit_ros.ros.segmentation_node:main',
        ],
    },
)
