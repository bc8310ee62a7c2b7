"""A durable spool: MQTT messages kept on disk while the broker cannot take them.

The publisher appends here instead of handing messages to paho's memory while the broker is away
(see :mod:`gateway.publish.mqtt`), and replays the spool, oldest first, once it is back. A
process killed during an outage leaves its spool behind; the next one replays it.

Layout of ``{state_dir}/spool/``: numbered segment files (``0000000000000001.seg``, ...) and a
``lock`` file that one process holds (``flock``) while it uses the folder. New messages go to the
newest segment (the *head*); a segment is closed when it reaches ``segment_bytes`` or when the
replay wants to read it, and is never written again: every process starts a new head, so nobody
appends behind a tail that a killed process may have torn. A segment is deleted once the broker
has acknowledged every message in it (the publisher counts PUBACKs per segment).

Segment file (little-endian)::

    b"HGSPOOL1"                      file magic and format version
    record, record, ...
        magic   u16  0x5253          start of a record: finds garbage at once
        length  u32  length of body
        crc     u32  CRC-32 of body
        body    topic length u16, topic (UTF-8), payload

Durability: :meth:`Spool.append` only fills a buffer; :meth:`Spool.flush` hands it to the kernel
with one ``os.write`` (the publisher calls it after each batch), after which a killed process
loses nothing. :meth:`Spool.sync` adds the ``fsync`` (in a worker thread) that a power cut needs;
``mqtt.spool_fsync`` says how often.

Reading never raises on a damaged file: a record whose CRC does not match is skipped with a
warning; a tail that is cut short or is not a record ends the segment with one warning.

Error tree::

    OSError
    +-- SpoolError    the spool folder cannot be used (not creatable, or locked by another process)

Appends and flushes raise plain ``OSError`` (disk full, I/O error); the publisher then falls back
to paho's memory, as without a spool.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import struct
import zlib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from gateway.config.site import SpoolFsync
from gateway.logs import get_logger

log = get_logger(__name__)

FILE_MAGIC = b"HGSPOOL1"
RECORD_MAGIC = 0x5253
SUFFIX = ".seg"
RELEASE_SUFFIX = ".rel"
_INDEX = struct.Struct("<I")
SEGMENT_BYTES = 4 * 1024 * 1024  # small enough to read in one go, large enough to keep the file count low
MIN_SEGMENT_BYTES = 4096
MAX_RECORD_BYTES = 268_435_455 + 65_537  # paho's largest payload plus the largest topic: anything longer is garbage

_HEADER = struct.Struct("<HII")  # magic, body length, CRC-32 of body
_TOPIC_LENGTH = struct.Struct("<H")

Record = tuple[str, bytes]
"""One spooled message: topic and payload (always QoS 1, never retained)."""
Indexed = tuple[int, str, bytes]
"""A record with its index in its segment."""


class SpoolError(OSError):
    """The spool folder cannot be used."""


@dataclass(eq=False)
class Segment:
    """One segment file and what the publisher knows about its records (by index in the file).

    A record is *released* once it needs no sending (the broker acknowledged it, or a copy of
    it was made further on); releases are also appended to a side file, ``{seq}.rel`` (u32
    indices), so a process killed with a half-released segment does not send those again. A
    record is *held* while its original is still in flight on the live connection (it was
    copied here because its acknowledgement was late): the replay waits at a held record. The
    file goes when every record is released. Touched on the event loop only.
    """

    seq: int
    path: Path
    size: int  # bytes, including what is still buffered for the head
    records: int = 0  # records in the file; only meaningful when ``counted``
    counted: bool = True  # False for a file left by an earlier process, until it is read
    cursor: int = 0  # the replay's next index
    released: set[int] = field(default_factory=set)
    held: set[int] = field(default_factory=set)

    @property
    def rel_path(self) -> Path:
        return self.path.with_suffix(RELEASE_SUFFIX)

    @property
    def read_done(self) -> bool:
        """The replay has gone past every record."""
        return self.counted and self.cursor >= self.records

    @property
    def done(self) -> bool:
        """Every record was released: the file can go."""
        return self.counted and len(self.released) >= self.records


def encode_record(topic: str, payload: bytes) -> bytes:
    """One record as it is stored (for tests and tools; :meth:`Spool.append` builds it in place)."""
    topic_bytes = topic.encode()
    body = _TOPIC_LENGTH.pack(len(topic_bytes)) + topic_bytes + payload
    return _HEADER.pack(RECORD_MAGIC, len(body), zlib.crc32(body)) + body


def decode_records(data: bytes, name: str, offset: int = 0) -> list[Record]:
    """The records in ``data`` from ``offset`` on; damage is logged (``name`` says where), never raised."""
    records: list[Record] = []
    end = len(data)
    view = memoryview(data)
    while offset < end:
        if end - offset < _HEADER.size:
            log.warning("spool_torn_tail", segment=name, offset=offset, bytes_lost=end - offset, reason="cut short")
            break
        magic, length, crc = _HEADER.unpack_from(data, offset)
        if magic != RECORD_MAGIC or not _TOPIC_LENGTH.size <= length <= MAX_RECORD_BYTES:
            # Not a record header: the length cannot be trusted, so nothing after it can be found.
            log.warning("spool_torn_tail", segment=name, offset=offset, bytes_lost=end - offset, reason="garbage")
            break
        start = offset + _HEADER.size
        if start + length > end:
            log.warning("spool_torn_tail", segment=name, offset=offset, bytes_lost=end - offset, reason="cut short")
            break
        body = view[start : start + length]
        offset = start + length
        (topic_length,) = _TOPIC_LENGTH.unpack_from(body)
        if zlib.crc32(body) != crc or _TOPIC_LENGTH.size + topic_length > length:
            log.warning("spool_record_corrupt", segment=name, offset=start - _HEADER.size, bytes=length)
            continue
        topic_end = _TOPIC_LENGTH.size + topic_length
        try:
            topic = str(body[_TOPIC_LENGTH.size : topic_end], "utf-8")
        except UnicodeDecodeError:
            log.warning("spool_record_corrupt", segment=name, offset=start - _HEADER.size, bytes=length)
            continue
        records.append((topic, bytes(body[topic_end:])))
    return records


def read_releases(path: Path) -> set[int]:
    """The record indices a release side file lists (empty when there is none)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return set()
    except OSError as error:
        log.warning("spool_release_file_unreadable", file=path.name, error=str(error))
        return set()
    whole = len(data) - len(data) % _INDEX.size  # a torn last entry is ignored: that record is sent again
    return {index for (index,) in _INDEX.iter_unpack(data[:whole])}


def read_segment(path: Path) -> list[Record]:
    """Every intact record of a closed segment file (run in a worker thread: it reads the whole file)."""
    try:
        data = path.read_bytes()
    except OSError as error:
        log.warning("spool_segment_unreadable", segment=path.name, error=str(error))
        return []
    if not data:  # killed between creating the file and the first write: nothing was in it
        return []
    if not data.startswith(FILE_MAGIC):
        log.warning("spool_segment_unreadable", segment=path.name, bytes=len(data), error="no spool file header")
        return []
    return decode_records(data, path.name, len(FILE_MAGIC))


def count_records(path: Path) -> int:
    """Records in a segment file by their headers alone (how many a dropped file held)."""
    try:
        data = path.read_bytes()
    except OSError:
        return 0
    offset, count = len(FILE_MAGIC), 0
    while offset + _HEADER.size <= len(data):
        magic, length, _crc = _HEADER.unpack_from(data, offset)
        if magic != RECORD_MAGIC or offset + _HEADER.size + length > len(data):
            break
        offset += _HEADER.size + length
        count += 1
    return count


def _read_with_releases(segment: Segment) -> tuple[list[Record], set[int]]:
    return read_segment(segment.path), read_releases(segment.rel_path)


def _fsync_files(head: int | None, retired: list[int], directory: Path | None) -> None:
    """fsync (worker thread): closed segments' descriptors (then closed here), the head, the folder."""
    for fd in retired:
        try:
            os.fsync(fd)
        except OSError as error:
            log.warning("spool_fsync_failed", error=str(error))
        finally:
            os.close(fd)
    if head is not None:
        try:
            os.fsync(head)
        except OSError as error:
            # EBADF: the loop closed the head meanwhile (final close); nothing is left to sync.
            if error.errno != errno.EBADF:
                log.warning("spool_fsync_failed", error=str(error))
    if directory is not None:  # new and deleted segment files are entries in the folder
        try:
            folder = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
        except OSError as error:
            log.warning("spool_fsync_failed", folder=str(directory), error=str(error))


class Spool:
    """Append-only segment files in one folder; appended and read on the event loop only.

    ``max_bytes`` caps the files' total size: when an append would pass it, the oldest segments
    are deleted and their unsent messages counted in :attr:`dropped`. ``segment_bytes`` defaults
    to 4 MiB, or an eighth of the cap when that is smaller, so a drop frees a fraction of it.
    """

    def __init__(
        self, directory: Path, *, max_bytes: int, fsync: SpoolFsync = "interval", segment_bytes: int | None = None
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.fsync: SpoolFsync = fsync
        self.segment_bytes = segment_bytes or max(MIN_SEGMENT_BYTES, min(SEGMENT_BYTES, max_bytes // 8))
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as error:
            raise SpoolError(f"spool folder {directory}: {error.strerror or error}") from error
        try:
            # Two gateways appending to one folder would interleave records; the kernel drops the
            # lock when the holder dies, so a killed process never leaves it behind.
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(self._lock_fd)
            raise SpoolError(f"spool folder {directory} is in use by another process ({error.strerror})") from error
        self._segments: deque[Segment] = deque()  # oldest first; the head, when open, is last
        for path in sorted(directory.glob(f"*{SUFFIX}")):
            if path.stem.isdigit():
                self._segments.append(Segment(int(path.stem), path, path.stat().st_size, counted=False))
        self.bytes = sum(segment.size for segment in self._segments)
        self._next_seq = self._segments[-1].seq + 1 if self._segments else 1
        self._head: Segment | None = None
        self._fd: int | None = None
        self._buffer = bytearray()
        self._head_flushed = 0  # bytes of the head already in the file
        self._dirty = False  # the head has bytes not yet fsynced
        self._retired: list[int] = []  # closed segments' descriptors waiting for their fsync
        self._directory_dirty = False
        self._sync_lock = asyncio.Lock()
        self._reading: tuple[Segment, list[Record]] | None = None
        self._releases: dict[Segment, bytearray] = {}  # new releases not yet in their side files
        self._closed = False
        self.appended = 0
        self.dropped = 0  # messages deleted unsent because the spool was full
        self.dropped_segments = 0
        if self._segments:
            log.info("spool_found", folder=str(directory), segments=len(self._segments), bytes=self.bytes)

    # -- writing (event loop) -----------------------------------------------------------------

    def append(self, topic: str, payload: bytes) -> tuple[Segment, int]:
        """Add one message to the buffer (:meth:`flush` writes it to the file); where it went."""
        topic_bytes = topic.encode()
        topic_length = _TOPIC_LENGTH.pack(len(topic_bytes))
        length = _TOPIC_LENGTH.size + len(topic_bytes) + len(payload)
        size = _HEADER.size + length
        head = self._head
        if head is None or (head.records and head.size + size > self.segment_bytes):
            head = self._open_head()
        if self.bytes + size > self.max_bytes:
            self._make_room(size)
        crc = zlib.crc32(payload, zlib.crc32(topic_bytes, zlib.crc32(topic_length)))
        buffer = self._buffer
        buffer += _HEADER.pack(RECORD_MAGIC, length, crc)
        buffer += topic_length
        buffer += topic_bytes
        buffer += payload
        head.size += size
        head.records += 1
        self.bytes += size
        self.appended += 1
        return head, head.records - 1

    def release(self, segment: Segment, index: int) -> None:
        """Record ``index`` of ``segment`` needs no sending any more (written to its side file at the next flush)."""
        if index in segment.released or segment not in self._segments:
            return
        segment.released.add(index)
        segment.held.discard(index)
        self._releases.setdefault(segment, bytearray()).extend(_INDEX.pack(index))

    def hold(self, segment: Segment, index: int) -> None:
        """The original of this record is in flight: the replay must wait for its fate."""
        segment.held.add(index)

    def rewind(self, segment: Segment, index: int) -> None:
        """Record ``index`` was read but not delivered: the replay goes back to it (oldest first)."""
        if segment not in self._segments or index in segment.released:
            return
        segment.cursor = min(segment.cursor, index)
        if self._reading is not None and self._reading[0] is not segment and self._reading[0].seq > segment.seq:
            self._reading = None  # back to the older segment first; the newer one keeps its cursor

    def unhold(self, segment: Segment, index: int) -> None:
        """The original's connection is gone: the replay sends the record."""
        segment.held.discard(index)

    @property
    def unflushed(self) -> bool:
        """Appended messages or releases are still only in memory."""
        return bool(self._buffer) or bool(self._releases)

    def flush(self) -> None:
        """Hand the buffer to the kernel (one ``os.write``): from here a killed process loses nothing.

        On an error the file is cut back to where it was and the buffer kept, so no half record
        is left behind; the error is raised.
        """
        self._flush_releases()
        if not self._buffer or self._fd is None:
            return
        fd = self._fd
        try:
            written = os.write(fd, self._buffer)
            while written < len(self._buffer):  # a short write (rare for regular files): write the rest
                written += os.write(fd, self._buffer[written:])
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, self._head_flushed)
            raise
        self._head_flushed += written
        self._buffer.clear()
        self._dirty = True

    def _flush_releases(self) -> None:
        """Append the new releases to their segments' side files (a lost one means one duplicate, no loss)."""
        releases, self._releases = self._releases, {}
        for segment, data in releases.items():
            if segment not in self._segments:
                continue
            try:
                fd = os.open(segment.rel_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
                try:
                    os.write(fd, data)
                finally:
                    os.close(fd)
            except OSError as error:
                log.warning("spool_release_write_failed", segment=segment.path.name, error=str(error))

    def take_unwritten(self) -> list[Record]:
        """Remove and return what is buffered but not in the file (after a failed :meth:`flush`)."""
        data = bytes(self._buffer)
        self._buffer.clear()
        records = decode_records(data, "(buffer)")
        if self._head is not None:
            self._head.size -= len(data)
            self._head.records -= len(records)
            self.bytes -= len(data)
        return records

    def _open_head(self) -> Segment:
        self._close_head()
        path = self.directory / f"{self._next_seq:016d}{SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o640)
        try:
            os.write(fd, FILE_MAGIC)  # unbuffered, so the buffer only ever holds whole records
        except OSError:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        segment = Segment(self._next_seq, path, len(FILE_MAGIC))
        self._next_seq += 1
        self._fd, self._head, self._head_flushed = fd, segment, len(FILE_MAGIC)
        self._segments.append(segment)
        self.bytes += segment.size
        self._directory_dirty = True
        return segment

    def _close_head(self) -> None:
        """Flush and close the head; it is read-only from now on."""
        if self._fd is None:
            return
        try:
            self.flush()
        finally:
            fd, self._fd, self._head = self._fd, None, None
            if self.fsync == "never" or not self._dirty:
                os.close(fd)
            else:
                self._retired.append(fd)  # the next sync() fsyncs and closes it
            self._dirty = False

    def _make_room(self, size: int) -> None:
        """Delete the oldest segments until ``size`` more bytes fit (never the head)."""
        while self.bytes + size > self.max_bytes and len(self._segments) > 1:
            segment = self._segments[0]
            unsent = (
                segment.records - len(segment.released)
                if segment.counted
                else count_records(segment.path) - len(read_releases(segment.rel_path))
            )
            self._remove(segment)
            self.dropped += unsent
            self.dropped_segments += 1
            log.warning(
                "spool_full_dropped_oldest",
                segment=segment.path.name,
                messages=unsent,
                bytes=segment.size,
                dropped_total=self.dropped,
                max_mb=round(self.max_bytes / 2**20, 3),
            )

    def _remove(self, segment: Segment) -> None:
        self._segments.remove(segment)
        self.bytes -= segment.size
        if self._reading is not None and self._reading[0] is segment:
            self._reading = None
        self._releases.pop(segment, None)
        try:
            segment.path.unlink(missing_ok=True)
            segment.rel_path.unlink(missing_ok=True)
        except OSError as error:  # it stays on disk, to be sent again (twice) by the next process
            log.warning("spool_delete_failed", segment=segment.path.name, error=str(error))
        self._directory_dirty = True

    # -- durability ----------------------------------------------------------------------------

    @property
    def needs_sync(self) -> bool:
        """Something was written or created since the last fsync."""
        return self._dirty or bool(self._retired) or self._directory_dirty or bool(self._buffer)

    async def sync(self) -> None:
        """Flush, then fsync in a worker thread (the event loop runs on); nothing with ``never``."""
        self.flush()
        if self.fsync == "never":
            return
        async with self._sync_lock:
            retired, self._retired = self._retired, []
            head = self._fd if self._dirty else None
            directory = self.directory if self._directory_dirty else None
            self._dirty = self._directory_dirty = False
            if head is None and not retired and directory is None:
                return
            # The thread owns (and closes) the retired descriptors; the head stays open here.
            await asyncio.to_thread(_fsync_files, head, retired, directory)

    async def close(self) -> None:
        """Write (and fsync, unless ``never``) what is buffered, close the files, free the folder."""
        if self._closed:
            return
        self._closed = True
        try:
            self._close_head()
        finally:
            try:
                await self.sync()
            finally:
                os.close(self._lock_fd)

    # -- reading (event loop) ------------------------------------------------------------------

    def has_backlog(self) -> bool:
        """Some segment holds records the replay has not gone past yet."""
        return any(not s.read_done and (s is not self._head or s.records > s.cursor) for s in self._segments)

    @property
    def waiting(self) -> int:
        """Messages in the spool not yet released (a file left by an earlier process counts
        from when it is read)."""
        return sum(s.records - len(s.released) for s in self._segments if s.counted)

    @property
    def files(self) -> list[Path]:
        """The segment files, oldest first."""
        return [segment.path for segment in self._segments]

    async def read(self, limit: int) -> tuple[Segment | None, list[Indexed]]:
        """Up to ``limit`` records to send from the oldest segment not fully read, and that segment.

        Released records are skipped; the batch stops before a held one (the replay waits for
        it). Reading the head closes it first (later appends start a new one). A file is read
        whole, with its release side file, in a worker thread; an empty list means nothing is
        to be sent now.
        """
        if self._reading is None:
            segment = next((s for s in self._segments if not s.read_done), None)
            if segment is None:
                return None, []
            if segment is self._head:
                if segment.records <= segment.cursor:
                    return None, []
                self._close_head()
            records, released = await asyncio.to_thread(_read_with_releases, segment)
            if segment not in self._segments:  # dropped by the size cap while it was being read
                return None, []
            segment.records, segment.counted = len(records), True
            segment.released |= {i for i in released if i < len(records)}
            self._reading = (segment, records)
        segment, records = self._reading
        batch: list[Indexed] = []
        while segment.cursor < len(records) and len(batch) < limit:
            index = segment.cursor
            if index in segment.held:
                break
            segment.cursor += 1
            if index not in segment.released:
                topic, payload = records[index]
                batch.append((index, topic, payload))
        if segment.cursor >= len(records):
            self._reading = None
        return segment, batch

    def release_done(self) -> int:
        """Delete the segments whose every message the broker acknowledged; how many went."""
        done = [s for s in self._segments if s.done and s is not self._head]
        for segment in done:
            self._remove(segment)
        return len(done)
