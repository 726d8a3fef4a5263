"""Camera names and the topics next to an image topic, as image_transport names them."""

from typing import List


def namespace_of(topic: str) -> str:
    """Return the namespace of a fully qualified topic (``/front/image_raw`` -> ``/front``)."""
    head = topic.rstrip('/').rsplit('/', 1)[0]
    return head or '/'


def camera_name(topic: str) -> str:
    """Return a camera's name: the last part of its image topic's namespace.

    ``/front/image_raw`` -> ``front``; ``/robot/left/image`` -> ``left``.

    :raises ValueError: for a topic in the root namespace (``/image``), which names no
        camera.
    """
    namespace = namespace_of(topic)
    name = namespace.rsplit('/', 1)[-1]
    if not name:
        raise ValueError(f'camera topic {topic!r} has no namespace to name the camera by; '
                         f"use e.g. '/front/image_raw'")
    return name


def camera_info_topic(image_topic: str) -> str:
    """Return ``<image namespace>/camera_info``, as image_transport's camera subscriber."""
    namespace = namespace_of(image_topic)
    return ('' if namespace == '/' else namespace) + '/camera_info'


def check_cameras(topics: List[str]) -> List[str]:
    """Return the camera names of ``topics``; raise ``ValueError`` for clashes or bad topics."""
    names = []
    for topic in topics:
        if not topic.startswith('/'):
            raise ValueError(f'camera topic {topic!r} must be absolute (start with /)')
        name = camera_name(topic)
        if name in names:
            raise ValueError(f'cameras {topics[names.index(name)]!r} and {topic!r} both '
                             f'name a camera {name!r}; give each camera its own namespace')
        names.append(name)
    return names
