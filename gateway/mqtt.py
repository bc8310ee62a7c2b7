"""The one MQTT client of the gateway: paho driven from the asyncio event loop.

The publisher (:mod:`gateway.publish.mqtt`) and the historian (:mod:`gateway.historian`) both
use :class:`MqttConnection`. paho runs no thread of its own: its socket is registered with the
event loop (``add_reader``/``add_writer``, paho's ``on_socket_*`` callbacks, as aiomqtt does), so
``loop_read``/``loop_write`` run on the loop as soon as the socket is ready and every paho
callback (connect, message, PUBACK, disconnect) runs on the loop too. No thread hop, no lock: a
reading handed to :meth:`MqttConnection.publish` is written to the socket at the loop's next
turn. ``TCP_NODELAY`` is set on every connection: without it Nagle's algorithm and the broker's
delayed ACKs hold small messages back by tens of milliseconds (measured 2026-11: 37-44 ms p99
sample -> broker with paho's own thread and Nagle, see bench/README.md).

Each connection attempt uses a fresh paho client. paho's memory of a dropped connection (its
unacknowledged messages, which it would resend on its own) therefore never outlives it: what to
send again after a drop is the owner's decision (the publisher's spool), taken once per drop.

Connecting (DNS, TCP, TLS handshake) blocks, so it runs in a worker thread; the socket is handed
to the loop once it is open. Reconnects use :class:`gateway.backoff.Backoff` (1 s doubling to
``mqtt.reconnect_max_s``). A broker that accepts TCP but sends no CONNACK (frozen) counts as a
failed attempt after ``CONNACK_TIMEOUT_S``.

The connection's state is logged once per change, with the reason: ``mqtt_connected``,
``mqtt_disconnected``, ``mqtt_unreachable`` (also when the broker is not there at start),
``mqtt_connect_refused`` (bad credentials, not authorised); a broker that stays away logs
nothing more until its state or reason changes. paho 2.2 may report one drop twice
(``on_disconnect`` from both the read error and the socket close): the owner's
``on_disconnected`` is called once per connection.

Exception tree (paho's return codes become exceptions)::

    MqttError
    +-- MqttNotConnectedError   no connection now (the message was not taken)
    +-- MqttCodeError           paho returned a failing code; ``rc`` says which
        +-- MqttQueueFullError  paho's queue is full (``MQTT_ERR_QUEUE_SIZE``)
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.backoff import Backoff
from gateway.config.site import Mqtt
from gateway.logs import get_logger

log = get_logger(__name__)

CONNACK_TIMEOUT_S = 10.0  # a broker that took the TCP connection but says nothing is frozen or overloaded
MISC_PERIOD_S = 1.0  # paho's keepalive check (PINGREQ, ping timeout): its own loop calls it once a second
RECONNECT_MIN_S = 1.0


class MqttError(Exception):
    """Base of the MQTT client's errors."""


class MqttNotConnectedError(MqttError):
    """There is no connection to the broker now."""


class MqttCodeError(MqttError):
    """paho returned a failing code."""

    def __init__(self, rc: MQTTErrorCode | int, what: str) -> None:
        self.rc = rc
        super().__init__(f"{what}: {paho.error_string(rc)} (paho code {int(rc)})")


class MqttQueueFullError(MqttCodeError):
    """paho refused the message: its queue is full."""


def _raise_for(rc: MQTTErrorCode | int, what: str) -> None:
    if rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
        return
    if rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
        raise MqttNotConnectedError(what)
    if rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
        raise MqttQueueFullError(rc, what)
    raise MqttCodeError(rc, what)


@dataclass(frozen=True, slots=True, kw_only=True)
class Will:
    """The message the broker publishes when the connection dies without a DISCONNECT."""

    topic: str
    payload: bytes
    retain: bool = True


_PUBACK_OK = ReasonCode(PacketTypes.PUBACK)  # "success", what an MQTT 3.1.1 PUBACK means
_NO_PROPERTIES = Properties(PacketTypes.PUBACK)  # type: ignore[no-untyped-call]


class _Client(paho.Client):
    """paho's client, taking an MQTT 3.1.1 PUBACK without decoding it as MQTT 5.

    paho 2.x turns every PUBACK into a new ``ReasonCode`` and ``Properties``, even on MQTT 3.1.1
    where the packet is just the 2-byte message id: ~100 us of CPU per published message on
    2026-12-01 (2 vCPU under load), as much as encoding the reading. This reads the id and
    goes on exactly as paho does (its own ``_do_on_publish``), with one shared "success" and
    one empty property set. MQTT 5, PUBCOMP and a malformed packet take paho's own way.
    """

    def _handle_pubackcomp(self, cmd: Any) -> MQTTErrorCode:
        packet = self._in_packet["packet"]
        if cmd != "PUBACK" or self._protocol != paho.MQTTv311 or len(packet) != 2:
            result: MQTTErrorCode = super()._handle_pubackcomp(cmd)
            return result
        mid = (packet[0] << 8) | packet[1]
        with self._out_message_mutex:
            if mid in self._out_messages:
                done: MQTTErrorCode = self._do_on_publish(mid, _PUBACK_OK, _NO_PROPERTIES)
                return done
        return MQTTErrorCode.MQTT_ERR_SUCCESS


def make_paho(config: Mqtt, client_id: str, *, clean_session: bool, manual_ack: bool) -> paho.Client:
    """A paho client set up from the site's MQTT section (credentials, TLS)."""
    client = _Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=clean_session,
        protocol=paho.MQTTv311,
        manual_ack=manual_ack,
    )
    if config.username:
        client.username_pw_set(config.username, config.password.get_secret_value() if config.password else None)
    if config.tls is not None:
        client.tls_set(
            ca_certs=str(config.tls.ca_file) if config.tls.ca_file else None,
            certfile=str(config.tls.cert_file) if config.tls.cert_file else None,
            keyfile=str(config.tls.key_file) if config.tls.key_file else None,
            cert_reqs=ssl.CERT_REQUIRED,
        )
        client.tls_insecure_set(config.tls.insecure)
    return client


def set_nodelay(sock: Any) -> None:
    """Send each MQTT packet at once (paho never sets TCP_NODELAY)."""
    raw = sock if isinstance(sock, socket.socket) else getattr(sock, "_sock", None)  # (TLS wraps it)
    if isinstance(raw, socket.socket):
        with contextlib.suppress(OSError):  # not TCP (a test's socketpair): nothing to tune
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class MqttConnection:
    """A connection to the broker that keeps itself up while :meth:`run` runs.

    The owner sets the callbacks (all called on the event loop):

    - ``on_connected(session_present)``: each time a connection is up (subscribe here);
    - ``on_disconnected(reason)``: once per connection that was up and is gone;
    - ``on_publish(mid)``: the broker acknowledged the QoS 1 message ``mid`` of this connection;
    - ``on_message(message)``: a message arrived on a subscription.

    ``name`` says which part of the gateway this is in the log (``publisher``, ``historian``).
    """

    def __init__(
        self,
        config: Mqtt,
        client_id: str,
        *,
        name: str,
        clean_session: bool = True,
        manual_ack: bool = False,
        will: Will | None = None,
    ) -> None:
        self.config = config
        self.client_id = client_id
        self.name = name
        self.broker = f"{config.host}:{config.port}"
        self._clean_session = clean_session
        self._manual_ack = manual_ack
        self._will = will
        self.on_connected: Callable[[bool], None] = lambda _present: None
        self.on_disconnected: Callable[[str], None] = lambda _reason: None
        self.on_publish: Callable[[int], None] = lambda _mid: None
        self.on_message: Callable[[paho.MQTTMessage], None] = lambda _message: None
        self._client: paho.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connected = False
        self._connack: asyncio.Future[tuple[bool, str | None]] | None = None
        self._closed: asyncio.Event = asyncio.Event()
        self._reported: tuple[str, str] | None = None  # (state, reason) last logged
        self._flush_due = False
        self.connects = 0
        self.generation = 0  # counts connections made: a received message's id is only valid in its own

    @property
    def connected(self) -> bool:
        """A connection is up (CONNACK received, not dropped since)."""
        return self._connected

    # -- owner API (event loop) ---------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> int:
        """Queue one message on the socket; returns its message id (for ``on_publish``)."""
        client = self._client
        if client is None or not self._connected:
            raise MqttNotConnectedError(f"publish to {topic}: not connected to {self.broker}")
        info = client.publish(topic, payload, qos=qos, retain=retain)
        _raise_for(info.rc, f"publish to {topic}")
        return info.mid

    def subscribe(self, topic: str, *, qos: int = 1) -> None:
        """Subscribe on the current connection (call from ``on_connected`` to survive reconnects)."""
        client = self._client
        if client is None or not self._connected:
            raise MqttNotConnectedError(f"subscribe to {topic}: not connected to {self.broker}")
        rc, _mid = client.subscribe(topic, qos=qos)
        _raise_for(rc, f"subscribe to {topic}")

    def ack(self, mid: int) -> None:
        """Acknowledge a received QoS 1 message (``manual_ack``); nothing when the connection is gone."""
        client = self._client
        if client is not None and self._connected:
            _raise_for(client.ack(mid, 1), f"acknowledge message {mid}")

    def in_flight(self) -> int:
        """QoS 1 messages handed to paho on this connection and not yet acknowledged."""
        client = self._client
        return len(client._out_messages) if client is not None else 0  # noqa: SLF001 - no public count in paho 2.x

    # -- the connection loop ------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, stay connected, reconnect with backoff; until cancelled.

        Cancelling stops the reconnecting only: a connection that is up stays up (its socket is
        served by the loop, not by this task) until :meth:`close`, so the owner can still say
        goodbye and collect acknowledgements while it shuts down.
        """
        self._loop = asyncio.get_running_loop()
        backoff = Backoff(base_s=RECONNECT_MIN_S, cap_s=float(self.config.reconnect_max_s))
        while True:
            failure = await self._connect_once()
            if failure is None:
                backoff.reset()
                self._report("connected", "")
                await self._closed.wait()  # set when the socket closes
                continue  # a drop: retry at once (a broker restart is often over in a second)
            self._report(*failure)
            await asyncio.sleep(backoff.next_s())

    async def _connect_once(self) -> tuple[str, str] | None:
        """One attempt; None when connected, else (state, reason) for the log."""
        client = make_paho(self.config, self.client_id, clean_session=self._clean_session, manual_ack=self._manual_ack)
        if self._will is not None:
            client.will_set(self._will.topic, self._will.payload, qos=1, retain=self._will.retain)
        client.max_inflight_messages_set(self.config.max_inflight)
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        assert self._loop is not None
        self._connack = self._loop.create_future()
        self._closed = asyncio.Event()
        self._client = client
        try:
            rc = await asyncio.to_thread(client.connect, self.config.host, self.config.port, self.config.keepalive_s)
            _raise_for(rc, "connect")
        except (OSError, MqttError, ValueError) as error:
            self._drop(client)
            return "unreachable", _describe(error)
        try:
            async with asyncio.timeout(CONNACK_TIMEOUT_S):
                accepted, refusal = await self._connack
        except TimeoutError:
            self._drop(client)
            return "unreachable", f"no CONNACK within {CONNACK_TIMEOUT_S:g} s (broker frozen or overloaded)"
        if not accepted:
            self._drop(client)
            return ("refused", refusal or "connection closed before CONNACK")
        return None

    def _drop(self, client: paho.Client) -> None:
        """Abandon an attempt: close its socket, forget the client."""
        with contextlib.suppress(Exception):  # already half closed: nothing more to release
            client._sock_close()  # noqa: SLF001 - paho has no public close without a DISCONNECT packet
        if self._client is client:
            self._client = None

    def close(self) -> None:
        """Say DISCONNECT (so the broker does not send the will) and close the socket."""
        client, self._client = self._client, None
        if client is None:
            return
        if self._connected:
            with contextlib.suppress(Exception):  # best effort on the way out
                client.disconnect()
                client.loop_write()
        self._connected = False
        with contextlib.suppress(Exception):
            client._sock_close()  # noqa: SLF001 - see _drop

    @property
    def answered(self) -> bool:
        """The first connection attempt has ended: connected, refused or unreachable."""
        return self._reported is not None

    def _report(self, state: str, reason: str) -> None:
        """Log the state once per change of (state, reason)."""
        if self._reported == (state, reason):
            return
        first = self._reported is None
        self._reported = (state, reason)
        if state == "connected":
            self.connects += 1
            log.info("mqtt_connected", client=self.name, broker=self.broker)
        elif state == "refused":
            log.error(
                "mqtt_connect_refused", client=self.name, broker=self.broker, user=self.config.username, reason=reason
            )
        elif state == "disconnected":
            log.warning("mqtt_disconnected", client=self.name, broker=self.broker, reason=reason)
        else:
            log.warning(
                "mqtt_unreachable",
                client=self.name,
                broker=self.broker,
                reason=reason,
                at_start=first,
                retry="every 1 s doubling to mqtt.reconnect_max_s; logged again when the reason changes",
            )

    # -- paho callbacks: all on the event loop (the socket callbacks too, but the first may
    #    come from the worker thread that connects) -------------------------------------------

    def _on_socket_open(self, client: paho.Client, _userdata: Any, sock: Any) -> None:
        set_nodelay(sock)
        self._call_on_loop(self._watch, client, sock)

    def _watch(self, client: paho.Client, sock: Any) -> None:
        assert self._loop is not None
        if client is not self._client:
            return  # an abandoned attempt
        self._loop.add_reader(sock, self._readable, client)
        self._loop.call_later(MISC_PERIOD_S, self._misc, client)
        if client._registered_write:  # noqa: SLF001 - CONNECT was queued before the loop saw the socket
            self._loop.add_writer(sock, self._writable, client)

    def _on_register_write(self, client: paho.Client, _userdata: Any, sock: Any) -> None:
        loop = self._loop
        assert loop is not None
        if _on_loop(loop) and not self._flush_due:
            # Packets were queued on the loop (a publish, an ack): write them all at the end of
            # this turn with one loop_write, instead of a selector registration per message.
            self._flush_due = True
            loop.call_soon(self._flush, client, sock)
        elif not _on_loop(loop):
            self._call_on_loop(self._add_writer, client, sock)

    def flush(self) -> None:
        """Write the packets queued in this turn of the loop now (the publisher does after each
        batch) rather than at the loop's next turn."""
        client = self._client
        if self._flush_due and client is not None:
            self._flush(client, client.socket())

    def _flush(self, client: paho.Client, sock: Any) -> None:
        if not self._flush_due:
            return  # flushed already (flush())
        self._flush_due = False
        if client is not self._client:
            return
        client.loop_write()
        if client.want_write():  # the socket's buffer is full: let the selector say when it drains
            self._add_writer(client, sock)

    def _add_writer(self, client: paho.Client, sock: Any) -> None:
        assert self._loop is not None
        current: Any = client.socket()
        if client is self._client and sock is current:  # not a socket of a dropped connection
            self._loop.add_writer(current, self._writable, client)

    def _on_unregister_write(self, _client: paho.Client, _userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(ValueError, OSError):  # already closed
            self._loop.remove_writer(sock)

    def _on_socket_close(self, client: paho.Client, _userdata: Any, sock: Any) -> None:
        self._call_on_loop(self._unwatch, client, sock)

    def _unwatch(self, client: paho.Client, sock: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)
        self._lost(client, "connection closed")

    def _readable(self, client: paho.Client) -> None:
        client.loop_read()

    def _writable(self, client: paho.Client) -> None:
        client.loop_write()

    def _misc(self, client: paho.Client) -> None:
        if client is not self._client or client.loop_misc() != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return
        assert self._loop is not None
        self._loop.call_later(MISC_PERIOD_S, self._misc, client)

    def _on_connect(self, client: paho.Client, _userdata: Any, flags: Any, reason: Any, _props: Any) -> None:
        future = self._connack
        if client is not self._client or future is None or future.done():
            return
        if reason.is_failure:
            future.set_result((False, str(reason)))
            return
        self._connected = True
        self.generation += 1
        future.set_result((True, None))
        self.on_connected(bool(getattr(flags, "session_present", False)))

    def _on_disconnect(self, client: paho.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        self._lost(client, str(reason))

    def _lost(self, client: paho.Client, reason: str) -> None:
        """The connection of ``client`` is gone (reported once, however often paho says so)."""
        if client is not self._client:
            return
        self._client = None
        was_connected, self._connected = self._connected, False
        if self._connack is not None and not self._connack.done():
            self._connack.set_result((False, f"connection closed before CONNACK ({reason})"))
        self._closed.set()
        if was_connected:
            self._report("disconnected", reason)
            self.on_disconnected(reason)

    def _on_publish(self, client: paho.Client, _userdata: Any, mid: int, _reason: Any, _props: Any) -> None:
        if client is self._client:
            self.on_publish(mid)

    def _on_message(self, client: paho.Client, _userdata: Any, message: paho.MQTTMessage) -> None:
        if client is self._client:
            self.on_message(message)

    def _call_on_loop(self, callback: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        assert loop is not None
        if _on_loop(loop):
            callback(*args)
        else:  # the connecting worker thread
            with contextlib.suppress(RuntimeError):  # the loop has closed: the gateway stopped
                loop.call_soon_threadsafe(callback, *args)


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    """This thread runs ``loop`` (not the worker thread that connects)."""
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def _describe(error: BaseException) -> str:
    """A short, stable reason for the log (stable, so a broker that stays away logs once)."""
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, TimeoutError | socket.timeout):
        return "connect timed out"
    if isinstance(error, socket.gaierror):
        return f"host name not resolved ({error.strerror})"
    if isinstance(error, ssl.SSLError):
        return f"TLS: {error.reason or error}"
    if isinstance(error, OSError):
        return error.strerror or type(error).__name__
    return str(error)
