"""An embedded MQTT 3.1.1 broker: the demo's and the tests' fallback when Mosquitto is absent.

``make demo`` prefers a private Mosquitto; on a machine without it (no root, no apt) it runs
this module instead (``python -m simulators.broker --port N``). It is pure standard library
and covers what our paho-mqtt 2.x clients (protocol MQTTv311) do, correctly:

- CONNECT with clean or persistent sessions (``clean_session=False`` keeps subscriptions and
  queues QoS 1, not QoS 0, messages while the client is away, at most ``max_queued`` per
  session, oldest dropped and counted), CONNACK with session-present, keepalive (closed after
  1.5x keepalive without a packet), last will (published on any end but DISCONNECT, takeover
  included);
  username and password are accepted and not checked;
- PUBLISH QoS 0 and 1, retained messages, delivery QoS = min(publish, subscription),
  in-order delivery per client, at most ``max_inflight`` unacknowledged QoS 1 messages per
  client with the rest queued (the historian acknowledges only after its database write),
  redelivery of the unacknowledged ones with DUP when a persistent session resumes;
- SUBSCRIBE/UNSUBSCRIBE with ``+`` and ``#`` (``$`` topics skip first-level wildcards),
  PINGREQ, DISCONNECT; a second connection with a client id takes the session over.

Not supported, on purpose: MQTT 5 and 3.1; QoS 2 exactly-once (a QoS 2 publish gets its
PUBREC/PUBCOMP but is routed at once and delivered at QoS 1, so at least once; subscriptions
are granted QoS 1 at most); TLS; authentication and ACLs; session expiry (persistent sessions
live until the broker stops); persistence to disk; ``$SYS`` topics; backpressure for QoS 0
(a subscriber reading slower than QoS 0 arrives grows its send buffer; QoS 1 is bounded by
the in-flight window). A malformed packet closes that client's connection only.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import signal
import sys
from collections import deque
from dataclasses import dataclass, field
from typing import Self

log = logging.getLogger(__name__)

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 10, 11, 12, 13, 14
CONNECT_TIMEOUT_S = 10.0  # a socket that never sends CONNECT must not hold a handler forever


class MalformedPacketError(Exception):
    """A packet breaks MQTT 3.1.1; the connection that sent it is closed."""


@dataclass(frozen=True, slots=True)
class _Message:
    topic: str
    payload: bytes
    qos: int
    retain: bool


@dataclass(eq=False, slots=True)
class _Connection:
    writer: asyncio.StreamWriter
    client_id: str = ""
    session: _Session | None = None  # None before CONNECT and after a takeover
    will: _Message | None = None

    def send(self, data: bytes) -> None:
        # a connection being closed may still get routed messages: unacked ones stay in flight
        if not self.writer.transport.is_closing():
            self.writer.write(data)


@dataclass(eq=False, slots=True)
class _Session:
    client_id: str
    clean: bool
    subscriptions: dict[str, int] = field(default_factory=dict)  # filter -> granted QoS
    queue: deque[_Message] = field(default_factory=deque)  # not yet sent, in order
    inflight: dict[int, _Message] = field(default_factory=dict)  # sent, not acked; insertion = send order
    next_mid: int = 0
    dropped: int = 0
    connection: _Connection | None = None


class _Cursor:
    """Reads MQTT fields from a packet body; running short is a malformed packet."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, count: int) -> bytes:
        if self.pos + count > len(self.data):
            raise MalformedPacketError("packet shorter than its fields")
        chunk = self.data[self.pos : self.pos + count]
        self.pos += count
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def binary(self) -> bytes:
        return self.take(self.u16())

    def text(self) -> str:
        try:
            return self.binary().decode()
        except UnicodeDecodeError as exc:
            raise MalformedPacketError("string is not UTF-8") from exc

    def rest(self) -> bytes:
        return self.take(len(self.data) - self.pos)

    @property
    def done(self) -> bool:
        return self.pos >= len(self.data)


def _packet(first_byte: int, body: bytes = b"") -> bytes:
    header, length = bytearray([first_byte]), len(body)
    while True:
        length, byte = divmod(length, 128)
        header.append(byte | 0x80 if length else byte)
        if not length:
            return bytes(header) + body


def _publish_packet(message: _Message, mid: int | None, dup: bool) -> bytes:
    topic = message.topic.encode()
    flags = dup << 3 | message.qos << 1 | message.retain
    body = len(topic).to_bytes(2, "big") + topic + (mid.to_bytes(2, "big") if mid else b"") + message.payload
    return _packet(PUBLISH << 4 | flags, body)


def _valid_filter(topic_filter: str) -> bool:
    levels = topic_filter.split("/")
    return bool(topic_filter) and all(
        ("#" not in level or (level == "#" and index == len(levels) - 1)) and ("+" not in level or level == "+")
        for index, level in enumerate(levels)
    )


def _check_topic(topic: str) -> None:
    if not topic or "+" in topic or "#" in topic:
        raise MalformedPacketError(f"invalid topic name {topic!r}")


class _Node:
    __slots__ = ("children", "subscribers")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.subscribers: dict[str, int] = {}  # client id -> granted QoS


class _TopicTree:
    """Subscriptions by filter level: matching a topic walks only the branches that can match."""

    def __init__(self) -> None:
        self.root = _Node()

    def add(self, topic_filter: str, client_id: str, qos: int) -> None:
        node = self.root
        for level in topic_filter.split("/"):
            node = node.children.setdefault(level, _Node())
        node.subscribers[client_id] = qos

    def remove(self, topic_filter: str, client_id: str) -> None:
        levels, path = topic_filter.split("/"), [self.root]
        for level in levels:
            if (child := path[-1].children.get(level)) is None:
                return
            path.append(child)
        path[-1].subscribers.pop(client_id, None)
        # prune emptied branches so subscribe/unsubscribe churn does not grow the tree
        for level, parent, node in zip(reversed(levels), reversed(path[:-1]), reversed(path[1:]), strict=True):
            if node.children or node.subscribers:
                break
            del parent.children[level]

    def match(self, topic: str) -> dict[str, int]:
        """Client id -> the highest QoS among that client's matching subscriptions."""
        found: dict[str, int] = {}
        self._walk(self.root, topic.split("/"), 0, topic.startswith("$"), found)
        return found

    def _walk(self, node: _Node, levels: list[str], index: int, dollar: bool, found: dict[str, int]) -> None:
        wildcards = not (dollar and index == 0)
        matched = []
        if wildcards and (multi := node.children.get("#")) is not None:
            matched.append(multi.subscribers)  # "a/#" also matches "a" itself
        if index == len(levels):
            matched.append(node.subscribers)
        else:
            if (child := node.children.get(levels[index])) is not None:
                self._walk(child, levels, index + 1, dollar, found)
            if wildcards and (single := node.children.get("+")) is not None:
                self._walk(single, levels, index + 1, dollar, found)
        for subscribers in matched:
            for client_id, qos in subscribers.items():
                found[client_id] = max(qos, found.get(client_id, 0))


async def _read_packet(reader: asyncio.StreamReader, max_bytes: int) -> tuple[int, int, bytes]:
    first = (await reader.readexactly(1))[0]
    length = 0
    for shift in range(0, 28, 7):
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
    else:
        raise MalformedPacketError("remaining length longer than 4 bytes")
    if length > max_bytes:
        raise MalformedPacketError(f"packet of {length} bytes is over the {max_bytes} limit")
    return first >> 4, first & 0x0F, await reader.readexactly(length) if length else b""


class EmbeddedBroker:
    """An in-process MQTT 3.1.1 broker on asyncio; see the module docstring for its scope."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_inflight: int = 100,
        max_queued: int = 100_000,
        max_packet_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        if not 0 < max_inflight < 65535:
            raise ValueError("max_inflight must be 1..65534: packet ids are 16 bits")
        self.host, self.port = host, port
        self.max_inflight, self.max_queued, self.max_packet_bytes = max_inflight, max_queued, max_packet_bytes
        self._server: asyncio.Server | None = None
        self._sessions: dict[str, _Session] = {}
        self._tree = _TopicTree()
        self._retained: dict[str, _Message] = {}
        self._handlers: dict[asyncio.Task[None], _Connection] = {}
        self._stopping = False
        self._auto_ids = itertools.count(1)

    async def start(self) -> None:
        """Listen; with port 0 the system picks a free port, then ``.port`` tells which."""
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Close the listener and every connection; no last wills are sent for them."""
        self._stopping = True
        if self._server is not None:
            self._server.close()
        await asyncio.sleep(0)  # handlers of connections accepted just now register themselves
        # abort rather than cancel: on 3.11 a cancelled client_connected_cb task is logged as an error
        for conn in self._handlers.values():
            conn.writer.transport.abort()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        await asyncio.sleep(0)  # let aborted transports run connection_lost and close their sockets

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *_exc_info: object) -> None:
        await self.stop()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        conn = self._handlers[task] = _Connection(writer)
        try:
            if not self._stopping:
                await self._serve(conn, reader)
        except MalformedPacketError as exc:
            peer = writer.get_extra_info("peername")
            log.warning("closing client %r (%s): malformed packet: %s", conn.client_id, peer, exc)
        except TimeoutError:
            log.info("closing client %r: silent for longer than its keepalive allows", conn.client_id)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the peer went away; _end publishes its will
        except Exception:
            log.exception("closing client %r after an unexpected error", conn.client_id)
        finally:
            del self._handlers[task]
            self._end(conn)
            writer.close()  # flushes a refusing CONNACK first
            try:
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()
            except (TimeoutError, OSError):
                writer.transport.abort()  # a peer that stopped reading must not hold the handler

    async def _serve(self, conn: _Connection, reader: asyncio.StreamReader) -> None:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            kind, _flags, body = await _read_packet(reader, self.max_packet_bytes)
        if kind != CONNECT:
            raise MalformedPacketError(f"first packet is type {kind}, not CONNECT")
        keepalive_s = self._connect(conn, body)
        while conn.session is not None:  # None once another connection took the session over
            async with asyncio.timeout(keepalive_s * 1.5 if keepalive_s else None):
                kind, flags, body = await _read_packet(reader, self.max_packet_bytes)
            if kind == DISCONNECT:
                conn.will = None
                return
            self._dispatch(conn, conn.session, kind, flags, _Cursor(body))
            await conn.writer.drain()  # a client that does not read its acks stops being read

    def _connect(self, conn: _Connection, body: bytes) -> int:
        """Handle CONNECT; returns the keepalive (0 = none), or -1 after a refusing CONNACK."""
        cursor = _Cursor(body)
        if cursor.text() != "MQTT" or cursor.u8() != 4:
            conn.send(_packet(CONNACK << 4, b"\x00\x01"))  # unacceptable protocol version
            return -1
        flags, keepalive_s, client_id = cursor.u8(), cursor.u16(), cursor.text()
        if flags & 0x01 or (not flags & 0x04 and flags & 0x38) or (flags >> 3 & 3) == 3:
            raise MalformedPacketError(f"invalid CONNECT flags 0x{flags:02x}")
        if flags & 0x04:
            topic, payload = cursor.text(), cursor.binary()
            _check_topic(topic)
            conn.will = _Message(topic, payload, min(flags >> 3 & 3, 1), bool(flags & 0x20))
        if flags & 0x80:
            cursor.text()  # username: accepted, not checked
        if flags & 0x40:
            cursor.binary()  # password: accepted, not checked
        clean = bool(flags & 0x02)
        if not client_id:
            if not clean:
                conn.send(_packet(CONNACK << 4, b"\x00\x02"))  # a persistent session needs an id
                return -1
            client_id = f"auto-{next(self._auto_ids)}"
        conn.client_id = client_id
        session = self._sessions.get(client_id)
        if session is not None and (old := session.connection) is not None:
            log.info("client %r connected again: closing its previous connection", client_id)
            # its will goes out now, so it cannot land after what the new connection publishes
            session.connection, old.session, will, old.will = None, None, old.will, None
            old.writer.transport.abort()
            if will is not None:
                self._publish(will)
        if session is not None and (clean or session.clean):
            self._drop_session(session)
            session = None
        present = session is not None
        if session is None:
            session = self._sessions[client_id] = _Session(client_id, clean)
        session.connection, conn.session = conn, session
        conn.send(_packet(CONNACK << 4, bytes([present, 0])))
        for mid, message in session.inflight.items():  # MQTT-4.4.0-1: resend unacked with DUP
            conn.send(_publish_packet(message, mid, dup=True))
        self._pump(session)
        return keepalive_s

    def _dispatch(self, conn: _Connection, session: _Session, kind: int, flags: int, cursor: _Cursor) -> None:
        if kind == PUBLISH:
            qos = flags >> 1 & 3
            if qos == 3:
                raise MalformedPacketError("PUBLISH with QoS 3")
            topic = cursor.text()
            _check_topic(topic)
            mid = cursor.u16() if qos else 0
            if qos and not mid:
                raise MalformedPacketError("PUBLISH with packet id 0")
            self._publish(_Message(topic, cursor.rest(), min(qos, 1), bool(flags & 1)))
            if qos:  # QoS 2 gets PUBREC; its PUBREL then gets PUBCOMP, nothing is held in between
                conn.send(_packet((PUBACK if qos == 1 else PUBREC) << 4, mid.to_bytes(2, "big")))
        elif kind == PUBACK:
            session.inflight.pop(cursor.u16(), None)
            self._pump(session)
        elif kind == PUBREL and flags == 2:
            conn.send(_packet(PUBCOMP << 4, cursor.take(2)))
        elif kind == SUBSCRIBE and flags == 2:
            self._subscribe(conn, session, cursor)
        elif kind == UNSUBSCRIBE and flags == 2:
            mid = cursor.take(2)
            while not cursor.done:
                topic_filter = cursor.text()
                if session.subscriptions.pop(topic_filter, None) is not None:
                    self._tree.remove(topic_filter, session.client_id)
            conn.send(_packet(UNSUBACK << 4, mid))
        elif kind == PINGREQ:
            conn.send(_packet(PINGRESP << 4))
        else:
            raise MalformedPacketError(f"unexpected packet type {kind} with flags 0x{flags:x}")

    def _subscribe(self, conn: _Connection, session: _Session, cursor: _Cursor) -> None:
        mid, codes, granted = cursor.take(2), bytearray(), []
        while not cursor.done:
            topic_filter, requested = cursor.text(), cursor.u8()
            if requested > 2:
                raise MalformedPacketError(f"SUBSCRIBE with QoS byte 0x{requested:02x}")
            if not _valid_filter(topic_filter):
                codes.append(0x80)  # failure for this filter only (MQTT-3.8.3-2 allows either)
                continue
            qos = min(requested, 1)
            session.subscriptions[topic_filter] = qos
            self._tree.add(topic_filter, session.client_id, qos)
            codes.append(qos)
            granted.append((topic_filter, qos))
        if not codes:
            raise MalformedPacketError("SUBSCRIBE without a topic filter")
        conn.send(_packet(SUBACK << 4, mid + bytes(codes)))
        for topic_filter, qos in granted:  # retained ones, after the SUBACK, re-sent on re-subscribe
            single = _TopicTree()  # one filter, so retained messages match by the routing rules
            single.add(topic_filter, session.client_id, qos)
            for message in list(self._retained.values()):
                if single.match(message.topic):
                    self._deliver(session, _Message(message.topic, message.payload, min(message.qos, qos), True))

    def _publish(self, message: _Message) -> None:
        if message.retain:
            if message.payload:
                self._retained[message.topic] = message
            else:
                self._retained.pop(message.topic, None)  # still delivered below, as MQTT says
        for client_id, qos in self._tree.match(message.topic).items():
            # established subscriptions get retain=0 (MQTT-3.3.1-9)
            delivered = _Message(message.topic, message.payload, min(message.qos, qos), False)
            self._deliver(self._sessions[client_id], delivered)

    def _deliver(self, session: _Session, message: _Message) -> None:
        if session.connection is None and message.qos == 0:
            return  # QoS 0 is not kept for a client that is away
        if len(session.queue) >= self.max_queued:
            session.queue.popleft()
            session.dropped += 1
            if session.dropped % 10_000 == 1:
                log.warning("client %r: queue full, %d oldest messages dropped", session.client_id, session.dropped)
        session.queue.append(message)
        self._pump(session)

    def _pump(self, session: _Session) -> None:
        """Send queued messages in order while the in-flight window has room."""
        conn = session.connection
        while conn is not None and session.queue:
            message = session.queue[0]
            if message.qos and len(session.inflight) >= self.max_inflight:
                return  # a QoS 0 message behind it waits too: delivery stays in order
            session.queue.popleft()
            mid = None
            if message.qos:
                mid = session.next_mid = session.next_mid % 65535 + 1
                while mid in session.inflight:
                    mid = session.next_mid = session.next_mid % 65535 + 1
                session.inflight[mid] = message
            conn.send(_publish_packet(message, mid, dup=False))

    def _end(self, conn: _Connection) -> None:
        session = conn.session
        if session is None or session.connection is not conn:
            return  # never connected, refused, or taken over (that path sent the will)
        session.connection = None
        if session.clean:
            self._drop_session(session)
        if conn.will is not None and not self._stopping:
            self._publish(conn.will)

    def _drop_session(self, session: _Session) -> None:
        for topic_filter in session.subscriptions:
            self._tree.remove(topic_filter, session.client_id)
        if self._sessions.get(session.client_id) is session:
            del self._sessions[session.client_id]


async def _run(host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with EmbeddedBroker(host, port) as broker:
        # the demo and the tests read this line to learn the port (port 0 = a free one)
        sys.stdout.write(f"listening {host}:{broker.port}\n")
        sys.stdout.flush()
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    """``python -m simulators.broker --port N``: serve until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m simulators.broker", description="Embedded MQTT 3.1.1 broker.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=1883, help="TCP port; 0 picks a free one")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    # logs go to stderr: stdout carries only the "listening" line
    logging.basicConfig(stream=sys.stderr, level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(_run(args.host, args.port))


if __name__ == "__main__":
    main()
