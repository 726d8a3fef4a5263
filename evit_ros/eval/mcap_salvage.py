"""Reading the intact part of an MCAP file whose end is missing (a recorder that crashed).

Such a file has no footer or summary, so indexed readers refuse it. Here the records are
scanned from the start, as the MCAP specification lays them out (opcode, length, content),
down into chunks, up to the first byte that is missing. Uncompressed and zstd chunks are
read; a zstd chunk cut short is lost whole, an uncompressed one is read up to the cut.
"""

import struct
from pathlib import Path
from typing import BinaryIO, Dict, Iterator, List, NamedTuple, Optional, Tuple

MAGIC = b'\x89MCAP0\r\n'
OP_HEADER, OP_SCHEMA, OP_CHANNEL, OP_MESSAGE, OP_CHUNK = 0x01, 0x03, 0x04, 0x05, 0x06


class Channel(NamedTuple):
    """A topic found in the file (shaped like a rosbags connection where it matters)."""

    id: int
    topic: str
    msgtype: str
    msgcount: int


class _Cut(Exception):
    """The data ends inside a record."""


def _string(buf: memoryview, pos: int) -> Tuple[str, int]:
    (size,) = struct.unpack_from('<I', buf, pos)
    end = pos + 4 + size
    if end > len(buf):
        raise _Cut()
    return bytes(buf[pos + 4:end]).decode('utf-8', 'replace'), end


def _records(buf: memoryview) -> Iterator[Tuple[int, memoryview]]:
    """Yield ``(opcode, content)`` of complete records; a cut record ends the iteration."""
    pos = 0
    while pos + 9 <= len(buf):
        op = buf[pos]
        (size,) = struct.unpack_from('<Q', buf, pos + 1)
        start = pos + 9
        if start + size > len(buf):
            if op == OP_CHUNK:   # a cut chunk: hand over what there is
                yield op, buf[start:]
            return
        yield op, buf[start:start + size]
        pos = start + size


def _decompress(data: bytes, compression: str, size: int) -> Optional[bytes]:
    if compression == '':
        return data
    if compression == 'zstd':
        try:
            from compression import zstd
        except ImportError:
            try:
                from backports import zstd
            except ImportError:
                return None
        try:
            return zstd.decompress(data)
        except Exception:  # a cut zstd frame cannot be decoded
            return None
    return None


class McapSalvage:
    """Scan a damaged MCAP file; :attr:`channels` and :meth:`messages` give what is intact.

    :param path: the ``.mcap`` file.
    :raises ValueError: when the file does not even start like an MCAP file.
    """

    def __init__(self, path):
        self.path = Path(path)
        with open(self.path, 'rb') as handle:
            if handle.read(8) != MAGIC:
                raise ValueError(f'{self.path} is not an MCAP file')
        self._schemas: Dict[int, str] = {}
        self._channels: Dict[int, Tuple[str, int]] = {}
        counts: Dict[int, int] = {}
        for channel_id, _, _ in self._scan(None):
            counts[channel_id] = counts.get(channel_id, 0) + 1
        self.channels: List[Channel] = [
            Channel(cid, topic, self._schemas.get(schema, ''), counts.get(cid, 0))
            for cid, (topic, schema) in sorted(self._channels.items())]

    def _read(self, handle: BinaryIO) -> memoryview:
        return memoryview(handle.read())[len(MAGIC):]

    def _scan(self, wanted) -> Iterator[Tuple[int, int, bytes]]:
        with open(self.path, 'rb') as handle:
            data = self._read(handle)
        yield from self._walk(data, wanted, nested=False)

    def _walk(self, buf: memoryview, wanted, nested: bool):
        for op, content in _records(buf):
            try:
                if op == OP_SCHEMA:
                    (sid,) = struct.unpack_from('<H', content, 0)
                    name, _ = _string(content, 2)
                    self._schemas[sid] = name
                elif op == OP_CHANNEL:
                    cid, sid = struct.unpack_from('<HH', content, 0)
                    topic, _ = _string(content, 4)
                    self._channels[cid] = (topic, sid)
                elif op == OP_MESSAGE:
                    if len(content) < 22:
                        return
                    (cid,) = struct.unpack_from('<H', content, 0)
                    (log_time,) = struct.unpack_from('<Q', content, 6)
                    if wanted is None or cid in wanted:
                        yield cid, log_time, bytes(content[22:])
                elif op == OP_CHUNK and not nested:
                    (size,) = struct.unpack_from('<Q', content, 16)
                    compression, pos = _string(content, 28)
                    (length,) = struct.unpack_from('<Q', content, pos)
                    records = content[pos + 8:pos + 8 + length]
                    inner = _decompress(bytes(records), compression, size)
                    if inner is not None:
                        yield from self._walk(memoryview(inner), wanted, nested=True)
            except (struct.error, _Cut):
                return

    def messages(self, connections) -> Iterator[Tuple[Channel, int, bytes]]:
        """Yield ``(channel, log_time_ns, cdr_bytes)`` for the given channels, in file order."""
        by_id = {c.id: c for c in connections}
        for cid, log_time, data in self._scan(set(by_id)):
            yield by_id[cid], log_time, data
