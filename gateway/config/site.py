"""The site file: which devices, where the metrics go, how to log.

Every key is documented here (``Field(description=...)``), in ``config/site.example.yaml`` and
in the README; ``heat-gateway check -c FILE`` validates a file without connecting to anything.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, Self, get_args

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from gateway.config.control import ControlConfig
from gateway.config.profile import WriteOutOfRange

NAME = r"^[a-z0-9][a-z0-9_-]*$"
"""Site, device and kind names: one MQTT topic level and an InfluxDB tag or measurement, so no
``/``, ``+``, ``#``, ``$``, spaces, NUL or upper case (topics are case-sensitive, people are not)."""
NAME_MAX = 64
PROFILE_NAME = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$"
"""A profile file name without .yaml: no folder (``/``, ``..``), so it stays inside profiles_dir."""
TOPIC_PREFIX = r"^[^#+/$\x00][^#+/\x00]*(/[^#+/\x00]+)*$"
"""One or more topic levels: no wildcards, no empty level, no NUL, not ``$`` first (``$SYS``)."""
RESERVED_DEVICE_NAMES = frozenset({"gateway", "control", "historian"})
"""Topic levels the gateway publishes under itself (``{prefix}/{site}/gateway/status``,
``control/cmd``, ...): a device of that name would mix its metrics with them."""


class _Model(BaseModel):
    # NaN and infinity are never a setting: NaN compares false with every limit, so a NaN
    # bound would silently disable it.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class _DeviceBase(_Model):
    name: str = Field(
        pattern=NAME,
        max_length=NAME_MAX,
        description="Unique device name; becomes the MQTT topic level and the `device` tag. Lower case, digits, "
        "- and _; not gateway, control or historian (the gateway's own topic levels)",
    )
    kind: str = Field(
        pattern=NAME,
        max_length=NAME_MAX,
        description="What the device is (cdu, heat_meter, heat_pump_plc, panel_pc); the InfluxDB measurement",
    )
    profile: str = Field(
        pattern=PROFILE_NAME,
        max_length=NAME_MAX,
        description="Profile file name in profiles_dir, without .yaml (e.g. cdu)",
    )
    poll_period_s: float = Field(1.0, gt=0, le=3600, description="Seconds between polls, on an absolute schedule")
    timeout_s: float = Field(
        1.0,
        gt=0,
        le=60,
        description="Seconds to wait for one reply before the poll fails. Units behind one Modbus endpoint: "
        "3-5 x the slowest healthy reply, and below poll_period_s minus the other units' poll durations, so "
        "that retries of a unit that is down fit in the idle time (docs/profiles.md)",
    )
    backoff_max_s: float = Field(
        30.0, gt=0, le=3600, description="Longest wait between reconnect attempts to a device that is down"
    )
    enabled: bool = Field(default=True, description="false keeps the device in the file but does not poll it")

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if name in RESERVED_DEVICE_NAMES:
            raise ValueError(
                f"{name!r} is a topic level the gateway uses itself ({{prefix}}/{{site}}/{name}/...); "
                f"choose another name (reserved: {', '.join(sorted(RESERVED_DEVICE_NAMES))})"
            )
        return name


class ModbusDevice(_DeviceBase):
    """A Modbus TCP device (or one unit id behind a Modbus TCP gateway)."""

    protocol: Literal["modbus"] = Field(description="modbus")
    host: str = Field(min_length=1, description="IP address or host name")
    port: int = Field(502, ge=1, le=65535, description="TCP port")
    unit_id: int = Field(
        1,
        ge=0,
        le=255,
        description="Modbus unit (slave) id. Devices with the same host and port (units behind one "
        "Modbus TCP gateway) share one TCP connection",
    )
    # Quirks: the profile declares them for the model; these override them for one device, e.g.
    # when the same model sits behind a gateway that needs its own pauses. Omitted = the profile's.
    max_registers_per_request: int | None = Field(
        None, ge=1, le=125, description="Overrides the profile's max_registers_per_request"
    )
    max_gap: int | None = Field(None, ge=0, le=124, description="Overrides the profile's max_gap")
    one_request_per_signal: bool | None = Field(None, description="Overrides the profile's one_request_per_signal")
    pause_after_connect_s: float | None = Field(
        None, ge=0, le=10, description="Overrides the profile's pause_after_connect_s"
    )
    pause_between_requests_s: float | None = Field(
        None, ge=0, le=10, description="Overrides the profile's pause_between_requests_s"
    )
    write_single_with_fc16: bool | None = Field(None, description="Overrides the profile's write_single_with_fc16")
    write_out_of_range: WriteOutOfRange | None = Field(
        None, description="Overrides the profile's write_out_of_range (refuse or clamp)"
    )

    def profile_overrides(self) -> dict[str, Any]:
        """The quirk keys this device sets, to apply over its profile's."""
        return {key: getattr(self, key) for key in _PROFILE_OVERRIDES if getattr(self, key) is not None}


_PROFILE_OVERRIDES = (
    "max_registers_per_request",
    "max_gap",
    "one_request_per_signal",
    "pause_after_connect_s",
    "pause_between_requests_s",
    "write_single_with_fc16",
    "write_out_of_range",
)


class OpcUaSecurityPolicy(StrEnum):
    """OPC UA security policies the driver offers (the others are deprecated or rare on PLCs)."""

    NONE = "None"
    BASIC256SHA256 = "Basic256Sha256"


class OpcUaSecurityMode(StrEnum):
    """Message security mode of a secured channel."""

    SIGN = "Sign"
    SIGN_AND_ENCRYPT = "SignAndEncrypt"


class OpcUaTrust(StrEnum):
    """How the gateway decides to trust a server's certificate."""

    TOFU = "tofu"
    LIST = "list"


class OpcUaMode(StrEnum):
    """How values come in: one batched Read per period, or a subscription."""

    POLL = "poll"
    SUBSCRIBE = "subscribe"


class OpcUaSecurity(_Model):
    """Secure channel settings of one OPC UA device (``devices[].security``)."""

    policy: OpcUaSecurityPolicy = Field(
        OpcUaSecurityPolicy.NONE,
        description="None (no signing, no encryption) or Basic256Sha256 (needs mode, certificate, private_key)",
    )
    mode: OpcUaSecurityMode | None = Field(
        None, description="Sign or SignAndEncrypt; required with Basic256Sha256, not allowed with None"
    )
    certificate: Path | None = Field(
        None,
        description="The gateway's application instance certificate (DER or PEM); its URI "
        "subjectAltName becomes the client's application URI. Relative to the site file",
    )
    private_key: Path | None = Field(None, description="The certificate's RSA private key (PEM or DER)")
    private_key_password: SecretStr | None = Field(
        None, description="Password of an encrypted private key; use ${ENV_VAR}"
    )
    server_certificate: Path | None = Field(
        None,
        description="Pin: the server must present exactly this certificate (DER or PEM); trust "
        "and trust_dir are then not used",
    )
    trust: OpcUaTrust = Field(
        OpcUaTrust.TOFU,
        description="tofu: trust the certificate seen at the first connect, store it in trust_dir "
        "and refuse any other later; list: the server certificate must be one of the files in trust_dir",
    )
    trust_dir: Path | None = Field(
        None,
        description="Folder of trusted server certificates (*.der, *.pem, *.crt); "
        "default <state_dir>/opcua/trusted (tofu stores <device>.der there)",
    )

    @model_validator(mode="after")
    def _check_policy(self) -> Self:
        if self.policy is OpcUaSecurityPolicy.NONE:
            if self.mode is not None:
                raise ValueError("mode: policy None has no message security mode; remove mode or choose a policy")
            return self
        missing = [key for key in ("mode", "certificate", "private_key") if getattr(self, key) is None]
        if missing:
            raise ValueError(f"policy {self.policy} needs {', '.join(missing)}")
        if self.trust is OpcUaTrust.LIST and self.trust_dir is None and self.server_certificate is None:
            raise ValueError(
                "trust list needs trust_dir (a folder of trusted server certificates) or server_certificate"
            )
        return self


class OpcUaDevice(_DeviceBase):
    """An OPC UA server (panel PC, heat-pump PLC)."""

    protocol: Literal["opcua"] = Field(description="opcua")
    endpoint: str = Field(pattern=r"^opc\.tcp://", description="Endpoint URL, opc.tcp://host:port/path")
    username: str | None = Field(None, description="User name; anonymous when omitted")
    password: SecretStr | None = Field(None, description="Password; use ${ENV_VAR} to keep it out of the file")
    security: OpcUaSecurity = Field(
        default_factory=OpcUaSecurity,
        description="Secure channel: policy, mode, certificate, private_key, server_certificate, trust, trust_dir",
    )
    mode: OpcUaMode = Field(
        OpcUaMode.POLL,
        description="poll: one batched Read of every node per poll_period_s; subscribe: the server "
        "reports changes and each poll takes the latest values (a value not confirmed within "
        "3 x poll_period_s or the keep-alive time is bad)",
    )
    sampling_interval_ms: float | None = Field(
        None,
        ge=0,
        le=3_600_000,
        description="subscribe: how often the server samples each node; poll_period_s when omitted, 0 = fastest",
    )
    queue_size: int = Field(
        1, ge=1, le=10_000, description="subscribe: values the server queues per node between two publishes"
    )
    deadband_abs: float = Field(
        0.0,
        ge=0,
        description="subscribe: a numeric value is reported only when it moves more than this "
        "(engineering units; 0 = every change). Not applied to bool and string nodes",
    )
    max_nodes_per_read: int = Field(
        0,
        ge=0,
        description="Largest Read request; 0 = the server's OperationLimits/MaxNodesPerRead, read at connect",
    )

    @model_validator(mode="after")
    def _check_credentials(self) -> Self:
        if self.password is not None and self.username is None:
            raise ValueError("password is set but username is not")
        return self


Device = Annotated[ModbusDevice | OpcUaDevice, Field(discriminator="protocol")]


SpoolFsync = Literal["every_write", "interval", "never"]
"""When the MQTT spool forces its files to disk (``mqtt.spool_fsync``)."""


class Tls(_Model):
    ca_file: Path | None = Field(None, description="CA bundle to verify the broker; system CAs when omitted")
    cert_file: Path | None = Field(None, description="Client certificate for mutual TLS")
    key_file: Path | None = Field(None, description="Client private key for mutual TLS")
    insecure: bool = Field(default=False, description="Skip host-name verification (commissioning only)")


class Mqtt(_Model):
    host: str = Field("127.0.0.1", description="Broker host")
    port: int = Field(1883, ge=1, le=65535, description="Broker port (8883 for TLS)")
    tls: Tls | None = Field(None, description="TLS settings; plain TCP when omitted")
    username: str | None = Field(None, description="Broker user name")
    password: SecretStr | None = Field(None, description="Broker password; use ${ENV_VAR}")
    topic_prefix: str = Field(
        "heat",
        pattern=TOPIC_PREFIX,
        max_length=200,
        description="First topic level(s): {prefix}/{site}/...; no + or #, no empty level, not $ first",
    )
    client_id: str | None = Field(None, description="MQTT client id; heat-gateway-{site} when omitted")
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keepalive")
    queue_size: int = Field(
        10000,
        ge=10,
        description="Readings held between the pollers and the publisher; when full the oldest is "
        "dropped and counted so polling never waits for the broker",
    )
    max_inflight: int = Field(
        20,
        ge=1,
        le=1000,
        description="QoS 1 messages in flight; keep it modest: paho is slower with a large window "
        "(docs/library-limits.md)",
    )
    reconnect_max_s: int = Field(
        30,
        ge=1,
        le=3600,
        description="Longest wait between reconnect attempts to the broker; the wait starts at 1 s and doubles",
    )
    spool: bool = Field(
        default=True,
        description="Keep on disk, in {state_dir}/spool, every message the broker has not acknowledged within "
        "1 s (or, while a historian is online, that the historian has not reported stored within 1 s), and "
        "everything while the broker is unreachable; send it oldest first once the broker is back, between live "
        "messages; a segment file is deleted when all of it is safe. Survives a restart or a killed process "
        "(docs/nothing-lost.md). false: messages wait in memory only and a restart during an outage loses them",
    )
    spool_max_mb: int = Field(
        512,
        ge=1,
        le=1_000_000,
        description="Largest spool on disk in MiB; when full the oldest segment file is deleted and its "
        "messages are counted and logged as dropped. The example site (15 devices, 1-2 s polls) spools "
        "~11 kB/s, so 512 MiB covers ~13 hours of outage",
    )
    spool_fsync: SpoolFsync = Field(
        "interval",
        description="When spooled messages are forced to disk. Each batch is written to the operating system "
        "at once, so a killed or restarted process loses nothing whatever this says; fsync only matters for "
        "a power cut or kernel crash. interval: fsync about once a second, in a worker thread (a power cut "
        "loses at most ~1 s; flash is not worn by one sync per message); every_write: fsync after every "
        "batch (slowest, wears SD/eMMC flash); never: leave it to the OS (written back within ~30 s)",
    )


class InfluxDb(_Model):
    url: str = Field(pattern=r"^https?://", description="InfluxDB 2.x (or v2-write-compatible) base URL")
    org: str = Field("heat", description="InfluxDB organisation")
    bucket: str = Field("heat", description="InfluxDB bucket")
    token: SecretStr = Field(SecretStr(""), description="API token; use ${INFLUX_TOKEN}")
    batch_lines: int = Field(5000, ge=1, le=100000, description="Lines per write request")
    flush_interval_s: float = Field(1.0, gt=0, le=60, description="Longest time a line waits before it is written")
    buffer_max_lines: int = Field(2_000_000, ge=1000, description="Lines kept in memory while the database is down")
    timeout_s: float = Field(10.0, gt=0, description="HTTP timeout of one write")


class LogFormat(StrEnum):
    AUTO = "auto"
    JSON = "json"
    CONSOLE = "console"


class Logging(_Model):
    level: Literal["debug", "info", "warning", "error"] = Field("info", description="Lowest level logged")
    format: LogFormat = Field(
        LogFormat.AUTO, description="auto: JSON lines when stdout is not a terminal, console on a terminal"
    )


class Http(_Model):
    """The opt-in local HTTP endpoint (``gateway/health.py``): ``/healthz`` and Prometheus ``/metrics``."""

    host: str = Field(
        "127.0.0.1",
        min_length=1,
        description="Address to listen on; loopback unless a scraper on another host needs it",
    )
    gateway_port: int = Field(9108, ge=1, le=65535, description="Port of `heat-gateway run`'s endpoint")
    historian_port: int = Field(9109, ge=1, le=65535, description="Port of `heat-gateway historian`'s endpoint")

    @model_validator(mode="after")
    def _distinct_ports(self) -> Self:
        if self.gateway_port == self.historian_port:
            raise ValueError(f"gateway_port and historian_port are both {self.gateway_port}: both services listen")
        return self


class SiteConfig(_Model):
    """The whole site file."""

    site: str = Field(pattern=NAME, max_length=NAME_MAX, description="Site name; second topic level and the `site` tag")
    profiles_dir: Path = Field(Path("profiles"), description="Folder of device profiles, relative to this file")
    devices: list[Device] = Field(min_length=1, description="Devices to poll")
    mqtt: Mqtt = Field(default_factory=Mqtt, description="MQTT broker the metrics stream to")
    influxdb: InfluxDb | None = Field(None, description="Time-series database the historian writes to")
    logging: Logging = Field(default_factory=Logging, description="Log level and format")
    http: Http | None = Field(
        None, description="Local HTTP endpoint with /healthz and Prometheus /metrics; omitted = no endpoint"
    )
    state_dir: Path = Field(
        Path("var"),
        description="Writable folder for state (MQTT spool, trusted OPC UA certificates), relative to this file; "
        "under systemd use /var/lib/heat-gateway",
    )
    control: ControlConfig | None = Field(
        None,
        description="Supervisory control loop (roles, limits, tunings; see docs/control.md); "
        "omitted = the gateway only monitors and writes nothing",
    )

    @model_validator(mode="after")
    def _unique_names(self) -> Self:
        seen: dict[str, int] = {}
        for index, device in enumerate(self.devices):
            if device.name in seen:
                raise ValueError(
                    f"devices[{index}].name: {device.name!r} is already used by devices[{seen[device.name]}]"
                )
            seen[device.name] = index
        return self


def _secret_keys(model: type[BaseModel], seen: set[type[BaseModel]]) -> set[str]:
    """Names of the keys typed SecretStr anywhere under ``model`` (so a new one is masked too)."""
    seen.add(model)
    keys: set[str] = set()
    for name, info in model.model_fields.items():
        pending: list[Any] = [info.annotation]
        while pending:
            annotation = pending.pop()
            if annotation is SecretStr:
                keys.add(name)
            elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
                if annotation not in seen:
                    keys |= _secret_keys(annotation, seen)
            else:
                pending.extend(get_args(annotation))
    return keys


SECRET_KEYS = frozenset(_secret_keys(SiteConfig, set()))
"""Keys whose values are secrets (password, token, private_key_password): never printed."""
