"""Reading and writing camera images in rosbag2 bags (sqlite3 and mcap) without ROS.

Bags are read and written by the ``rosbags`` package, so they are standard rosbag2 bags that
``ros2 bag play`` accepts. Images come out as numpy arrays with their sensor_msgs encoding;
``sensor_msgs/msg/Image`` and ``sensor_msgs/msg/CompressedImage`` are both understood.

Stamps are kept as integer nanoseconds. Some recorders write ``nanosec`` values of 1e9 or
more; they are carried into the seconds (``sec=0, nanosec=2e9`` is 2 s) rather than refused.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

from evit_ros.runtime import image as decoding

IMAGE = 'sensor_msgs/msg/Image'
COMPRESSED = 'sensor_msgs/msg/CompressedImage'
IMAGE_TYPES = (IMAGE, COMPRESSED)
STORAGES = ('mcap', 'sqlite3')
NS = 1_000_000_000

#: sensor_msgs encoding -> (numpy dtype, channels) for the raw encodings we can read.
RAW_ENCODINGS: Dict[str, Tuple[str, int]] = decoding.RAW_ENCODINGS

#: OpenCV-style encodings -> the camera encoding they mean for segmentation.
CAMERA_ALIASES = {'8UC1': 'mono8', '8UC3': 'bgr8', '8UC4': 'bgra8'}


class BagError(Exception):
    """A bag that cannot be read as asked: the message says what is wrong and what to do."""


@dataclass
class Frame:
    """One decoded image message.

    :param index: position among the topic's messages (0-based, unreadable ones included).
    :param stamp_ns: header stamp in nanoseconds (out-of-range ``nanosec`` carried over).
    :param bag_time_ns: the bag's receive timestamp of the message.
    :param frame_id: the header's frame_id.
    :param image: ``HxW`` or ``HxWxC`` pixels.
    :param encoding: sensor_msgs encoding of ``image`` (compressed input decodes to bgr8, rgb8,
        mono8 or mono16).
    :param raw_format: a compressed message's ``format`` (empty for raw images).
    :param raw: a compressed message's bytes, kept to forward them unchanged.
    """

    index: int
    stamp_ns: int
    bag_time_ns: int
    frame_id: str
    image: np.ndarray
    encoding: str
    raw_format: str = ''
    raw: Optional[bytes] = None


def normalize_msgtype(msgtype: str) -> str:
    """Return a message type in today's form: ``sensor_msgs/Image`` -> ``sensor_msgs/msg/Image``.

    Bags recorded before Foxy (Crystal, Dashing, Eloquent) may name types without the
    ``msg`` part; the types themselves are unchanged.
    """
    parts = str(msgtype).split('/')
    if len(parts) == 2 and all(parts):
        return f'{parts[0]}/msg/{parts[1]}'
    return str(msgtype)


def stamp_to_ns(sec: int, nanosec: int) -> int:
    """Return a ``builtin_interfaces/Time`` as nanoseconds, tolerating ``nanosec >= 1e9``."""
    return int(sec) * NS + int(nanosec)


def ns_to_stamp(ns: int) -> Tuple[int, int]:
    """Return ``(sec, nanosec)`` with ``0 <= nanosec < 1e9`` for a time in nanoseconds."""
    sec, nanosec = divmod(int(ns), NS)
    return sec, nanosec


def typestore():
    """Return the rosbags type store for ROS 2 Kilted (built once)."""
    global _TYPESTORE
    if _TYPESTORE is None:
        from rosbags.typesys import get_typestore, Stores
        _TYPESTORE = get_typestore(Stores.ROS2_KILTED)
    return _TYPESTORE


_TYPESTORE = None


def image_from_raw(msg) -> Tuple[np.ndarray, str]:
    """Return the pixels and encoding of a ``sensor_msgs/Image`` (rosbags or rclpy message).

    The node's rules (:func:`evit_ros.runtime.image.decode_raw`): row padding removed,
    16-bit big-endian data byte-swapped, data of any size but ``step * height`` refused.

    :returns: ``HxW`` for single-channel encodings, ``HxWxC`` otherwise.
    :raises BagError: with the decoder's one-line reason.
    """
    try:
        pixels, encoding = decoding.decode_raw(msg.data, msg.width, msg.height, msg.step,
                                               str(msg.encoding), bool(msg.is_bigendian))
    except decoding.ImageError as exc:
        raise BagError(str(exc)) from None
    return (pixels[:, :, 0] if pixels.shape[2] == 1 else pixels), encoding


def image_from_compressed(msg) -> Tuple[np.ndarray, str]:
    """Decode a ``sensor_msgs/CompressedImage`` (JPEG or PNG) to pixels and an encoding.

    The node's rules (:func:`evit_ros.runtime.image.decode_compressed`), keeping
    single-channel PNGs (label maps) as ``mono8`` / ``mono16``.

    :returns: ``(bgr8 or rgb8 HxWx3 | mono8 HxW | mono16 HxW, encoding)``.
    :raises BagError: when the data is refused or is not a decodable image.
    """
    try:
        return decoding.decode_compressed(msg.data, str(msg.format), keep_depth=True)
    except decoding.ImageError as exc:
        raise BagError(str(exc)) from None


def decode_image(msgtype: str, msg) -> Tuple[np.ndarray, str]:
    """Return pixels and encoding for an Image or CompressedImage message."""
    if msgtype == COMPRESSED:
        return image_from_compressed(msg)
    return image_from_raw(msg)


def camera_encoding(encoding: str) -> str:
    """Return the encoding name the Segmenter knows for an image read from a bag."""
    return CAMERA_ALIASES.get(encoding, encoding)


def encoding_for(pixels: np.ndarray, encoding: Optional[str] = None) -> str:
    """Return ``encoding`` or the natural one for ``pixels`` (mono8/mono16/rgb8/rgba8)."""
    if encoding:
        return encoding
    if pixels.ndim == 2:
        return 'mono16' if pixels.dtype == np.uint16 else 'mono8'
    return {3: 'rgb8', 4: 'rgba8'}[pixels.shape[2]]


class _Storage:
    """One storage file (or a whole bag folder) and how to read its messages."""

    def __init__(self, connections, messages, salvaged: bool = False, closer=None):
        self.connections = list(connections)
        self.messages = messages
        self.salvaged = salvaged
        self._closer = closer

    def close(self):
        if self._closer:
            try:
                self._closer()
            except Exception:  # closing a damaged file must not hide the real error
                pass


def _open_file(path: Path, errors: List[str]) -> _Storage:
    """Open one ``.mcap`` / ``.db3`` file with rosbags, salvaging a truncated MCAP.

    :raises BagError: when the file cannot be read at all.
    """
    from rosbags.rosbag2 import Reader
    try:
        reader = Reader(path)
        reader.open()
        return _Storage(reader.connections,
                        lambda conns: reader.messages(connections=conns),
                        closer=reader.close)
    except Exception as exc:  # rosbags raises several types for broken files
        reason = _reason(exc)
    salvaged = None
    if path.suffix == '.mcap':
        from evit_ros.eval.mcap_salvage import McapSalvage
        try:
            salvaged = McapSalvage(path)
        except (OSError, ValueError):
            salvaged = None
    if salvaged is None or not salvaged.channels:
        raise BagError(f'cannot read {path}: {reason}')
    errors.append(f'{path.name} is damaged ({reason}); read the '
                  f'{sum(c.msgcount for c in salvaged.channels)} messages before the damage')
    return _Storage(salvaged.channels, salvaged.messages, salvaged=True)


def _read_metadata(folder: Path) -> Dict:
    """Return ``rosbag2_bagfile_information`` from ``metadata.yaml``, or ``{}``."""
    import yaml
    try:
        data = yaml.safe_load((folder / 'metadata.yaml').read_text())
        info = data.get('rosbag2_bagfile_information', {})
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError, AttributeError, yaml.YAMLError):
        return {}


def _metadata_topics(info: Dict) -> Dict[str, Tuple[str, int]]:
    topics = {}
    for item in info.get('topics_with_message_count') or []:
        try:
            meta = item['topic_metadata']
            topics[str(meta['name'])] = (normalize_msgtype(meta['type']),
                                         int(item.get('message_count', 0)))
        except (KeyError, TypeError, ValueError):
            continue
    return topics


class BagReader:
    """Read image topics from a rosbag2 bag (folder, or a single ``.mcap`` / ``.db3`` file).

    Topics and types come from the storage files themselves, so a ``metadata.yaml`` that
    disagrees with them (wrong type, wrong counts, missing topics) is noted in
    :attr:`errors` rather than believed. An MCAP file cut short is read up to the damage.
    Every failure to open or to find a usable topic raises :class:`BagError` with one line
    that lists the bag's topics and their types.

    :param path: the bag.
    """

    def __init__(self, path):
        self.path = Path(path)
        #: problems met while opening and reading (one line each), for the report.
        self.errors: List[str] = []
        #: how an older bag was read (no metadata.yaml, pre-Foxy type names), one line each.
        self.notes: List[str] = []
        self._storages: List[_Storage] = []
        self._metadata: Dict = {}
        if not self.path.exists():
            raise BagError(f'bag {self.path} does not exist')
        if self.path.is_dir():
            self._open_folder()
        else:
            self._storages.append(_open_file(self.path, self.errors))
        legacy = sorted({c.msgtype for s in self._storages for c in s.connections
                         if normalize_msgtype(c.msgtype) != c.msgtype})
        if legacy:
            self.notes.append(f'pre-Foxy type names read as today\'s: {", ".join(legacy)}')

    def _open_folder(self) -> None:
        from rosbags.rosbag2 import Reader
        self._metadata = _read_metadata(self.path)
        meta_topics = _metadata_topics(self._metadata)
        # Before metadata version 4 the paths start with the bag folder's own name.
        listed = [self.path / Path(str(p)).name
                  for p in self._metadata.get('relative_file_paths') or []]
        files = [p for p in listed if p.is_file()] or sorted(
            p for p in self.path.iterdir() if p.suffix in ('.mcap', '.db3'))
        if not (self.path / 'metadata.yaml').is_file():
            if not files:
                raise BagError(f'{self.path} is not a rosbag2 bag: no metadata.yaml and no '
                               f'.mcap / .db3 file')
            # Bags recorded by Crystal to Eloquent are often copied without it; nothing is
            # lost, the storage files say everything replay needs.
            self.notes.append(f'{self.path} has no metadata.yaml; read the storage files')
        if self._metadata.get('compression_format') or not files:
            # File-compressed bags (.zstd): let rosbags decompress through the metadata.
            try:
                reader = Reader(self.path)
                reader.open()
            except Exception as exc:  # rosbags raises several types for broken bags
                raise BagError(f'cannot open bag {self.path}: {_reason(exc)}'
                               f'{self._listing(meta_topics)}') from None
            self._storages.append(_Storage(
                reader.connections, lambda conns: reader.messages(connections=conns),
                closer=reader.close))
            return
        for path in files:
            try:
                self._storages.append(_open_file(path, self.errors))
            except BagError as exc:
                self.close()
                raise BagError(f'cannot open bag {self.path}: {exc}'
                               f'{self._listing(meta_topics)}') from None
        self._check_metadata(meta_topics)

    @staticmethod
    def _listing(meta_topics) -> str:
        if not meta_topics:
            return '; it lists no topics'
        listed = ', '.join(f'{name} ({msgtype}, {count} msgs)'
                           for name, (msgtype, count) in sorted(meta_topics.items()))
        return f'; its metadata.yaml lists: {listed}'

    def _check_metadata(self, meta_topics) -> None:
        actual = self.topics
        salvaged = any(s.salvaged for s in self._storages)
        for name, (msgtype, count) in sorted(meta_topics.items()):
            if name not in actual:
                self.errors.append(f'metadata.yaml lists {name} ({msgtype}) but the bag '
                                   f'files do not hold it')
            elif actual[name][0] != msgtype:
                self.errors.append(f'metadata.yaml says {name} is {msgtype}, the bag files '
                                   f'hold {actual[name][0]}')
            elif actual[name][1] != count and not salvaged:
                self.errors.append(f'metadata.yaml says {name} has {count} messages, the '
                                   f'bag files hold {actual[name][1]}')

    def close(self) -> None:
        """Close the bag's files."""
        for storage in self._storages:
            storage.close()
        self._storages = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def topics(self) -> Dict[str, Tuple[str, int]]:
        """Topic -> (message type, message count), as the storage files state them."""
        out = {}
        for storage in self._storages:
            for conn in storage.connections:
                msgtype, count = out.get(conn.topic, (normalize_msgtype(conn.msgtype), 0))
                out[conn.topic] = (msgtype, count + int(conn.msgcount or 0))
        return out

    @property
    def custom_data(self) -> Dict[str, str]:
        """The bag's ``custom_data`` metadata (rosbag2 version 6+), or an empty dict."""
        custom = self._metadata.get('custom_data')
        return {str(k): str(v) for k, v in custom.items()} if isinstance(custom, dict) else {}

    def describe(self) -> str:
        """Return the bag's topics and types on one line."""
        topics = self.topics
        if not topics:
            return f'bag {self.path} has no topics'
        listed = ', '.join(f'{name} ({msgtype}, {count} msgs)'
                           for name, (msgtype, count) in sorted(topics.items()))
        return f'bag {self.path} has: {listed}'

    def check_topic(self, topic: str, role: str = 'image') -> str:
        """Return the message type of ``topic``, which must carry images.

        :raises BagError: naming the problem and listing the bag's topics and types.
        """
        topics = self.topics
        if topic not in topics:
            raise BagError(f'no {role} topic {topic!r}; {self.describe()}')
        msgtype = topics[topic][0]
        if msgtype not in IMAGE_TYPES:
            raise BagError(f'{role} topic {topic} carries {msgtype}, not {IMAGE} or '
                           f'{COMPRESSED}; {self.describe()}')
        return msgtype

    def count(self, topic: str) -> int:
        """Message count of ``topic`` (0 when unknown, e.g. in a salvaged file)."""
        return self.topics.get(topic, ('', 0))[1]

    def frames(self, topics) -> Iterator[Tuple[str, Frame]]:
        """Yield ``(topic, Frame)`` for every readable message of ``topics``, in bag order.

        A message that cannot be decoded is skipped and noted in :attr:`errors`; a storage
        failure (truncated or corrupt file) ends that file and is noted too.
        """
        if isinstance(topics, str):
            topics = [topics]
        store = typestore()
        indices = {topic: 0 for topic in topics}
        for storage in self._storages:
            wanted = [c for c in storage.connections if c.topic in topics]
            if not wanted:
                continue
            stream = storage.messages(wanted)
            while True:
                try:
                    conn, bag_time, raw = next(stream)
                except StopIteration:
                    break
                except Exception as exc:  # sqlite / mcap errors on damaged files
                    self.errors.append(f'reading stopped early, the file is damaged: '
                                       f'{_reason(exc)}')
                    break
                index = indices[conn.topic]
                indices[conn.topic] += 1
                msgtype = normalize_msgtype(conn.msgtype)
                try:
                    msg = store.deserialize_cdr(raw, msgtype)
                    pixels, encoding = decode_image(msgtype, msg)
                    stamp = stamp_to_ns(msg.header.stamp.sec, msg.header.stamp.nanosec)
                except Exception as exc:  # a lying or damaged message: skip it, say so
                    reason = str(exc) if isinstance(exc, BagError) else _reason(exc)
                    self.errors.append(f'{conn.topic} message {index} unreadable: {reason}')
                    continue
                frame = Frame(index, stamp, int(bag_time), str(msg.header.frame_id), pixels,
                              encoding)
                if msgtype == COMPRESSED:
                    frame.raw_format, frame.raw = str(msg.format), bytes(msg.data)
                yield conn.topic, frame


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f'{type(exc).__name__}: {text[0]}' if text else type(exc).__name__


class BagWriter:
    """Write image topics into a new rosbag2 bag; usable as a context manager.

    :param path: the bag folder to create (must not exist).
    :param storage: ``mcap`` or ``sqlite3``.
    """

    def __init__(self, path, storage: str = 'mcap'):
        from rosbags.rosbag2 import StoragePlugin, Writer
        if storage not in STORAGES:
            raise BagError(f'unknown storage {storage!r}; choose {" or ".join(STORAGES)}')
        self.path = Path(path)
        if self.path.exists():
            raise BagError(f'{self.path} exists already; choose another output path')
        plugin = StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3
        self._writer = Writer(self.path, version=9, storage_plugin=plugin)
        self._writer.open()
        self._connections: Dict[str, object] = {}
        self._types: Dict[str, str] = {}
        self.count = 0

    def set_custom_data(self, key: str, value: str) -> None:
        """Store a ``key: value`` string pair in the bag's metadata."""
        self._writer.set_custom_data(key, value)

    def add_topic(self, topic: str, msgtype: str = IMAGE) -> None:
        """Declare an Image or CompressedImage topic."""
        if msgtype not in IMAGE_TYPES:
            raise BagError(f'cannot write {msgtype}; only {IMAGE} and {COMPRESSED}')
        self._connections[topic] = self._writer.add_connection(
            topic, msgtype, typestore=typestore())
        self._types[topic] = msgtype

    def _header(self, stamp_ns: int, frame_id: str):
        store = typestore()
        sec, nanosec = ns_to_stamp(stamp_ns)
        time = store.types['builtin_interfaces/msg/Time'](sec=sec, nanosec=nanosec)
        return store.types['std_msgs/msg/Header'](stamp=time, frame_id=frame_id)

    def write_image(self, topic: str, pixels: np.ndarray, stamp_ns: int, frame_id: str,
                    bag_time_ns: Optional[int] = None, encoding: Optional[str] = None) -> None:
        """Write ``pixels`` as a ``sensor_msgs/Image`` (lossless).

        :param encoding: sensor_msgs encoding; default mono8/mono16/rgb8/rgba8 by shape.
        """
        if topic not in self._connections:
            self.add_topic(topic, IMAGE)
        encoding = encoding_for(pixels, encoding)
        pixels = np.ascontiguousarray(pixels)
        if pixels.dtype == np.uint16:
            pixels = pixels.astype('<u2')
        height, width = pixels.shape[:2]
        step = pixels[0].nbytes if height else 0
        msg = typestore().types[IMAGE](
            header=self._header(stamp_ns, frame_id), height=height, width=width,
            encoding=encoding, is_bigendian=0, step=step,
            data=pixels.reshape(-1).view(np.uint8))
        self._write(topic, msg, IMAGE, stamp_ns if bag_time_ns is None else bag_time_ns)

    def write_compressed(self, topic: str, data: bytes, fmt: str, stamp_ns: int,
                         frame_id: str, bag_time_ns: Optional[int] = None) -> None:
        """Write already encoded JPEG/PNG bytes as a ``sensor_msgs/CompressedImage``."""
        if topic not in self._connections:
            self.add_topic(topic, COMPRESSED)
        msg = typestore().types[COMPRESSED](
            header=self._header(stamp_ns, frame_id), format=fmt,
            data=np.frombuffer(data, dtype=np.uint8))
        self._write(topic, msg, COMPRESSED, stamp_ns if bag_time_ns is None else bag_time_ns)

    def _write(self, topic, msg, msgtype, bag_time_ns):
        if self._types[topic] != msgtype:
            raise BagError(f'topic {topic} was declared {self._types[topic]}, not {msgtype}')
        raw = typestore().serialize_cdr(msg, msgtype)
        self._writer.write(self._connections[topic], int(bag_time_ns), raw)
        self.count += 1

    def close(self) -> None:
        """Finish the bag (metadata.yaml written); safe to call twice."""
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
