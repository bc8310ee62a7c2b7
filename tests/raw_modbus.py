"""A raw Modbus TCP server for tests: it answers each request with whatever bytes it is told to.

Not our simulator: it parses only the MBAP header and the first four bytes of a request, and a
test's ``answer`` function returns the reply as raw segments (bytes, each after a delay), so a
test can send a correct reply, a malformed one, a reply split over several TCP segments, or
nothing. Every request is answered in its own task, as a multi-unit TCP device (a CDU rack)
does: a slow unit does not hold up the others' replies.

It runs on its own event loop in a thread (:class:`ServerThread`), so the gateway's event loop
under test is not the one that produces the replies and their clock values.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

MBAP = struct.Struct(">HHHB")


@dataclass(frozen=True)
class RawRequest:
    """One request as it arrived."""

    transaction_id: int
    unit_id: int
    function_code: int
    address: int
    quantity: int


# A reply: segments of (delay before it in s, bytes or a function making the bytes when sent).
Segment = tuple[float, bytes | Callable[[], bytes]]
Answer = Callable[[RawRequest], list[Segment]]


def frame(tid: int, unit: int, pdu: bytes, *, protocol: int = 0, length: int | None = None) -> bytes:
    """An MBAP frame; ``length`` overrides the true length field (to lie with it)."""
    return MBAP.pack(tid, protocol, len(pdu) + 1 if length is None else length, unit) + pdu


def registers_pdu(function: int, words: list[int], *, byte_count: int | None = None) -> bytes:
    """A read-registers reply PDU; ``byte_count`` overrides the true one."""
    data = b"".join(struct.pack(">H", word) for word in words)
    return bytes([function, len(data) if byte_count is None else byte_count]) + data


def clock_words() -> list[int]:
    """The server's wall clock in ms since the epoch, as four registers (uint64, big-endian)."""
    now_ms = time.time_ns() // 1_000_000
    return [(now_ms >> shift) & 0xFFFF for shift in (48, 32, 16, 0)]


class RawServer:
    """Listens on a free loopback port; ``answer`` decides each reply."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.port = 0
        self.requests: list[RawRequest] = []
        self.accepted = 0  # TCP connections
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()  # replies on their way

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in list(self._writers):
            writer.close()  # the client handlers end on the closed stream, not by cancellation
        await self._server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        self.accepted += 1
        try:
            while True:
                tid, _protocol, length, unit = MBAP.unpack(await reader.readexactly(MBAP.size))
                body = await reader.readexactly(length - 1)
                function, address, quantity = struct.unpack_from(">BHH", body.ljust(5, b"\0"))
                request = RawRequest(tid, unit, function, address, quantity)
                self.requests.append(request)
                reply = asyncio.create_task(self._reply(writer, self.answer(request)), name=f"raw-reply-{tid}")
                self._tasks.add(reply)
                reply.add_done_callback(self._tasks.discard)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    @staticmethod
    async def _reply(writer: asyncio.StreamWriter, segments: list[Segment]) -> None:
        for delay_s, data in segments:
            if delay_s:
                await asyncio.sleep(delay_s)
            if writer.is_closing():
                return
            writer.write(data() if callable(data) else data)
            with contextlib.suppress(ConnectionError):
                await writer.drain()


class ServerThread:
    """Raw servers on an event loop of their own, in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="raw-modbus", daemon=True)
        self.servers: list[RawServer] = []

    def serve(self, answer: Answer) -> RawServer:
        server = RawServer(answer)
        asyncio.run_coroutine_threadsafe(server.start(), self.loop).result(5)
        self.servers.append(server)
        return server

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        for server in self.servers:
            asyncio.run_coroutine_threadsafe(server.stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


@contextlib.contextmanager
def server_thread() -> Iterator[ServerThread]:
    """A started :class:`ServerThread`, stopped afterwards."""
    thread = ServerThread()
    thread.start()
    try:
        yield thread
    finally:
        thread.stop()
