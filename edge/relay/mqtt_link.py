"""One MQTT 5 connection to a broker, for the relay and the ingest alike.

:class:`MqttLink` is a paho client whose network loop runs in its own thread; its
callbacks hand their arguments to trio with ``TrioToken.run_sync_soon`` and never block
(or, for a consumer, wait on a bounded channel: backpressure onto TCP). Creating the
client (TLS files), connecting and stopping its thread run in ``trio.to_thread``. A
connection is a persistent session (``clean_start`` false, a session expiry), so what
the broker holds for us waits while we are away. Each failure of the link is a
:class:`LinkError` naming it; the caller closes the link (:meth:`MqttLink.aclose`) and
the next attempt is a new one.
"""

from __future__ import annotations

import contextlib
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as paho
import trio
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode


class LinkError(Exception):
    """The broker or the network failed the link (described for ``last_error``)."""


@dataclass(frozen=True)
class MqttClientSettings:
    url: str  # mqtt://HOST:PORT or mqtts://HOST:PORT
    client_id: str
    username: str = ""
    password: str = ""  # never logged
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    keepalive: int = 30
    session_expiry: int = 86400
    connect_timeout: float = 30.0

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (8883 if parts.scheme == "mqtts" else 1883)

    @property
    def where(self) -> str:
        """The broker for the log: scheme, host and port (never a password)."""
        return f"{urlsplit(self.url).scheme}://{self.host}:{self.port}"


async def wait_either(a: trio.Event, b: trio.Event) -> None:
    """Return when either event is set."""
    async with trio.open_nursery() as nursery:
        async def wait(event: trio.Event) -> None:
            await event.wait()
            nursery.cancel_scope.cancel()
        nursery.start_soon(wait, a)
        nursery.start_soon(wait, b)


def describe_reason(rc: ReasonCode | int) -> str:
    if isinstance(rc, ReasonCode):
        return f"{rc.getName()} (0x{rc.value:02x})"
    return f"error {rc}"


class MqttLink:
    """One connection to a broker: a paho client whose network loop runs in its own
    thread. Open with :meth:`open` (in a worker thread), close with :meth:`aclose`.

    State changes arrive on the trio thread only (``run_sync_soon``): ``connected``,
    ``disconnected`` (with ``error``), PUBACK reason codes by message id in
    ``published``, SUBACK reason codes in ``subscribed``; ``on_message`` is called
    on the trio thread with each message. ``wake`` is set at every change.
    """

    def __init__(self, settings: MqttClientSettings, *,
                 on_message: Callable[[paho.MQTTMessage], None] | None = None,
                 sink: trio.MemorySendChannel[paho.MQTTMessage] | None = None,
                 manual_ack: bool = False, receive_maximum: int | None = None) -> None:
        """``on_message`` runs on the trio thread for each message; or, with ``sink``
        (for a consumer), each message is sent into that bounded channel and paho's
        thread waits while it is full (backpressure onto TCP: Mosquitto does not keep
        to the Receive Maximum we announce). Close the channel's receiving end before
        :meth:`aclose`, so that a waiting paho thread is released."""
        self._settings = settings
        self._token = trio.lowlevel.current_trio_token()
        self._on_message = on_message
        self._sink = sink
        self.connected = trio.Event()
        self.disconnected = trio.Event()
        self.error: str | None = None
        self.wake = trio.Event()
        self.published: dict[int, ReasonCode] = {}
        self.subscribed: dict[int, list[ReasonCode]] = {}
        self.receive_maximum = 65535  # the broker's, from CONNACK
        self.maximum_packet_size: int | None = None
        self.session_present = False
        self._client = paho.Client(paho.CallbackAPIVersion.VERSION2,
                                   client_id=settings.client_id, protocol=paho.MQTTv5,
                                   reconnect_on_failure=False, manual_ack=manual_ack)
        self._receive_maximum = receive_maximum
        self._lock = threading.Lock()  # _start's loop_start against _stop
        self._closed = False
        c = self._client
        c.on_connect = self._cb_connect
        c.on_connect_fail = self._cb_connect_fail
        c.on_disconnect = self._cb_disconnect
        c.on_publish = self._cb_publish
        c.on_subscribe = self._cb_subscribe
        c.on_message = self._cb_message

    # --- from the paho thread: hand over, never block ----------------------------------

    def _soon(self, fn: Callable[..., None], *args: Any) -> None:
        with contextlib.suppress(trio.RunFinishedError):  # the daemon is gone
            self._token.run_sync_soon(fn, *args)

    def _cb_connect(self, client: Any, userdata: Any, flags: Any, rc: ReasonCode,
                    properties: Properties | None) -> None:
        self._soon(self._connect_done, rc, properties, bool(getattr(flags, "session_present",
                                                                     False)))

    def _cb_connect_fail(self, client: Any, userdata: Any) -> None:
        self._soon(self._lost, "cannot connect to the broker (network or TLS)")

    def _cb_disconnect(self, client: Any, userdata: Any, flags: Any, rc: ReasonCode,
                       properties: Properties | None) -> None:
        self._soon(self._closed_by_broker, describe_reason(rc))

    def _cb_publish(self, client: Any, userdata: Any, mid: int, rc: ReasonCode,
                    properties: Properties | None) -> None:
        self._soon(self._publish_done, mid, rc)

    def _cb_subscribe(self, client: Any, userdata: Any, mid: int, rcs: list[ReasonCode],
                      properties: Properties | None) -> None:
        self._soon(self._subscribe_done, mid, list(rcs))

    def _cb_message(self, client: Any, userdata: Any, message: paho.MQTTMessage) -> None:
        if self._sink is None:
            self._soon(self._message, message)
            return
        with contextlib.suppress(trio.RunFinishedError, trio.BrokenResourceError,
                                 trio.ClosedResourceError, trio.Cancelled):
            trio.from_thread.run(self._sink.send, message, trio_token=self._token)

    # --- on the trio thread ------------------------------------------------------------

    def _poke(self) -> None:
        self.wake.set()
        self.wake = trio.Event()

    def _connect_done(self, rc: ReasonCode, properties: Properties | None,
                      session_present: bool) -> None:
        if rc.is_failure:
            self._lost(f"the broker refused the connection: {describe_reason(rc)}")
            return
        if properties is not None:
            self.receive_maximum = getattr(properties, "ReceiveMaximum", 65535)
            self.maximum_packet_size = getattr(properties, "MaximumPacketSize", None)
        self.session_present = session_present
        self.connected.set()
        self._poke()

    def _closed_by_broker(self, reason: str) -> None:
        if self.connected.is_set():
            self._lost(f"the broker closed the connection: {reason}")
        elif urlsplit(self._settings.url).scheme == "mqtts":
            self._lost(f"the broker closed the connection before accepting it: {reason} "
                       "(a broker that requires a client certificate does this without "
                       "one, or with one its CA did not sign)")
        else:
            self._lost(f"the broker closed the connection before accepting it: {reason}")

    def _lost(self, why: str) -> None:
        if self.error is None:
            self.error = why
        self.disconnected.set()
        self._poke()

    def _publish_done(self, mid: int, rc: ReasonCode) -> None:
        self.published[mid] = rc
        self._poke()

    def _subscribe_done(self, mid: int, rcs: list[ReasonCode]) -> None:
        self.subscribed[mid] = rcs
        self._poke()

    def _message(self, message: paho.MQTTMessage) -> None:
        if self._on_message is not None:
            self._on_message(message)
        self._poke()

    # --- the caller's side -------------------------------------------------------------

    async def open(self) -> None:
        """Connect, waiting for the CONNACK; LinkError if refused or not in time."""
        # Abandoned if cancelled (a TLS handshake with a silent peer blocks up to
        # connect_timeout): _start then sees the link closed and starts no loop.
        await trio.to_thread.run_sync(self._start, abandon_on_cancel=True)
        with trio.move_on_after(self._settings.connect_timeout):
            while not (self.connected.is_set() or self.disconnected.is_set()):
                await self.wake.wait()
        if self.disconnected.is_set():
            raise LinkError(self.error)
        if not self.connected.is_set():
            raise LinkError(f"no answer from the broker within {self._settings.connect_timeout:g}s")

    def _start(self) -> None:
        s, c = self._settings, self._client
        if s.username or s.password:
            c.username_pw_set(s.username or None, s.password or None)
        if urlsplit(s.url).scheme == "mqtts":
            try:
                c.tls_set(ca_certs=s.cafile, certfile=s.certfile, keyfile=s.keyfile,
                          cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise LinkError(f"TLS settings: {exc}") from exc
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = s.session_expiry
        if self._receive_maximum is not None:
            props.ReceiveMaximum = self._receive_maximum
        c.max_inflight_messages_set(65535)  # the caller keeps its own cap
        c.max_queued_messages_set(0)
        c.connect_timeout = s.connect_timeout
        try:
            # Here, not in paho's thread: a refused TCP connection or TLS handshake (a
            # CA that does not sign the broker's certificate) comes out with its reason.
            c.connect(s.host, s.port, keepalive=s.keepalive, clean_start=False,
                      properties=props)
        except ssl.SSLError as exc:
            raise LinkError(f"TLS with the broker failed: {exc.reason or exc}") from exc
        except OSError as exc:
            raise LinkError(f"cannot connect to the broker: {exc.strerror or exc}") from exc
        with self._lock:
            if self._closed:
                c.disconnect()
                return
            c.loop_start()

    def check(self) -> None:
        if self.disconnected.is_set():
            raise LinkError(self.error)

    def publish(self, topic: str, payload: bytes, *, user_properties: Sequence[tuple[str, str]]
                = (), response_topic: str | None = None, correlation: bytes | None = None
                ) -> int:
        """Queue a QoS 1 PUBLISH (paho's thread sends it); its message id."""
        self.check()
        props = Properties(PacketTypes.PUBLISH)
        if user_properties:
            props.UserProperty = list(user_properties)
        if response_topic is not None:
            props.ResponseTopic = response_topic
        if correlation is not None:
            props.CorrelationData = correlation
        info = self._client.publish(topic, payload, qos=1, properties=props)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise LinkError(f"cannot publish: {paho.error_string(info.rc)}")
        return info.mid

    async def subscribe(self, topic_filter: str, timeout: float) -> None:
        """Subscribe with QoS 1 and wait for the SUBACK; LinkError if refused."""
        self.check()
        rc, mid = self._client.subscribe(topic_filter, qos=1)
        if rc != paho.MQTT_ERR_SUCCESS or mid is None:
            raise LinkError(f"cannot subscribe: {paho.error_string(rc)}")
        with trio.move_on_after(timeout):
            while mid not in self.subscribed:
                self.check()
                await self.wake.wait()
        self.check()
        codes = self.subscribed.pop(mid, None)
        if codes is None:
            raise LinkError("the broker did not answer a subscription in time")
        if any(code.is_failure for code in codes):
            raise LinkError(f"the broker refused the subscription to {topic_filter}: "
                            f"{', '.join(describe_reason(c) for c in codes)}")

    def ack(self, mid: int, qos: int) -> None:
        """Acknowledge a message received with manual acks (after it is stored)."""
        self._client.ack(mid, qos)

    async def aclose(self) -> None:
        """Disconnect and stop paho's thread (in a worker thread: it joins)."""
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._stop)

    def _stop(self) -> None:
        with self._lock:
            self._closed = True
            self._client.disconnect()
            self._client.loop_stop()


def read_password(key: str, password: str, password_file: str) -> str:
    """The password from the config (or the environment) or its file; ConfigError
    naming ``key`` if the file cannot be read. Blocks on file I/O (at startup)."""
    from edge.core.errors import ConfigError

    if password or not password_file:
        return password
    try:
        with open(password_file, encoding="utf-8") as f:
            return f.read().strip()
    except OSError as exc:
        raise ConfigError(f"{key}.password_file", f"cannot read {password_file}: "
                          f"{exc.strerror}") from exc


def client_settings(key: str, m: Any, client_id: str) -> MqttClientSettings:
    """:class:`MqttClientSettings` from a ``[relay.mqtt]`` or ``[ingest.mqtt]`` table."""
    return MqttClientSettings(
        url=m.url, client_id=m.client_id or client_id, username=m.username,
        password=read_password(key, m.password, m.password_file),
        cafile=m.cafile or None, certfile=m.certfile or None, keyfile=m.keyfile or None,
        keepalive=m.keepalive, session_expiry=m.session_expiry)
