"""`ServeConfig`: every setting of the service, declared once.

The options of ``noduleflow serve`` are generated from these fields (name, type, default and
help; `noduleflow.commands.options.add_config_options`), the way the detection options are
generated from `DetectorConfig`; the model, backend and detection settings come from those
shared options. Standard library and the engine's errors only: building ``--help`` stays cheap.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import MISSING, dataclass, field
from pathlib import Path

from ..engine.errors import ConfigError

# argument groups of ``noduleflow serve --help``
NETWORK = "DICOM network"
SPOOL = "series and spool"
MODEL = "model"

AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")   # printable ASCII without backslash, 1-16 chars


def setting(default=MISSING, help: str = "", *, cli: bool = True, flag: str | None = None,
            metavar: str | None = None, group: str | None = None):
    """A `ServeConfig` field. ``help``: the one text the CLI shows; ``cli``: whether it is an option
    (``flag``, default ``--field-name``; ``metavar``; the argument ``group`` it is listed in)."""
    meta = {"help": help, "cli": cli, "flag": flag, "metavar": metavar, "group": group}
    return field(default=default, metadata={k: v for k, v in meta.items() if v is not None})


def parse_destination(value: str) -> tuple[str, str, int]:
    """'AET@host:port' -> (aet, host, port)."""
    m = re.match(r"^([^@]{1,16})@(.+):(\d{1,5})$", value or "")
    if not m or not AE_TITLE.match(m.group(1).strip() or "") or not 0 < int(m.group(3)) < 65536:
        raise ConfigError(f"--forward {value!r}: expected AET@host:port, e.g. PACS@10.0.0.5:104")
    return m.group(1).strip(), m.group(2), int(m.group(3))


def allowed_networks(values) -> tuple:
    """``--allow-host`` values -> `ipaddress` networks (an address is a network of one)."""
    nets = []
    for v in values:
        try:
            nets.append(ipaddress.ip_network(v, strict=False))
        except ValueError:
            raise ConfigError(f"--allow-host {v!r} is not an IP address or network (e.g. 10.0.0.5 or 10.0.0.0/24)") \
                from None
    return tuple(nets)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServeConfig:
    """The service's settings; ``--help`` and the messages name them by their options."""
    spool: Path = setting(help="spool folder: all state and results live here")
    host: str = setting("127.0.0.1", "address to listen on; 0.0.0.0 for every interface", group=NETWORK)
    port: int = setting(11112, "TCP port; 0 picks a free one", group=NETWORK)
    ae_title: str = setting("NODULEFLOW", "this service's AE title", group=NETWORK)
    allow_ae: tuple[str, ...] = setting(
        (), "calling AE title allowed to associate (repeatable); others are rejected. Required when listening "
            "beyond loopback, unless --allow-any-ae", metavar="TITLE", group=NETWORK)
    allow_any_ae: bool = setting(False, "accept any calling AE title", group=NETWORK)
    allow_hosts: tuple[str, ...] = setting(
        (), "peer address or network (10.0.0.5, 10.0.0.0/24) allowed to connect (repeatable; default any)",
        flag="--allow-host", metavar="ADDR", group=NETWORK)
    network: bool = setting(True, "run the DICOM listener; without it, folder watch only", group=NETWORK)
    quiet_s: float = setting(
        10.0, "a series is complete after S seconds without a new instance, with no association still sending "
              "it and no gap in its slices", flag="--quiet-period", group=SPOOL)
    incomplete_s: float = setting(
        600.0, "a series with a gap, or whose sender was cut off, waits S seconds for the rest; then a gapped one "
               "fails and a cut-off one is processed with its SR marked PARTIAL", flag="--incomplete-wait",
        group=SPOOL)
    poll_s: float = setting(0.5, "how often the threads look for work", cli=False)
    watch: Path | None = setting(None, "also take DICOM files dropped into DIR (deleted once spooled; bad files "
                                       "move to SPOOL/rejected/)", metavar="DIR", group=SPOOL)
    watch_settle_s: float = setting(2.0, "a dropped file is taken once unchanged for this long", cli=False)
    # the model, backend and detection settings: the options shared with `detect` (commands.options)
    model: str | None = setting(None, "model package folder (None: the shipped model)", cli=False)
    backend: str = setting("auto", "inference backend", cli=False)
    precision: str | None = setting(None, "None: the backend's own; fp32, int8, bf16 or fp16", cli=False)
    detection: object = setting(None, "a DetectorConfig (None: its defaults)", cli=False)
    png: bool = setting(True, "write the candidates picture of each series", group=MODEL)
    keep_instances: bool = setting(
        False, "keep a done series' images for good (else they are dropped --retain-instances seconds after; "
               "failed series keep them)", group=SPOOL)
    retain_s: float = setting(
        3600.0, "keep a done series' images S seconds, so that an instance arriving later merges with them into a "
                "new version of the series", flag="--retain-instances", group=SPOOL)
    max_attempts: int = setting(3, "a series interrupted this many times by a dying service is failed", group=SPOOL)
    forward: str | None = setting(None, "C-STORE each SR to this destination", metavar="AET@HOST:PORT",
                                  group=NETWORK)
    forward_retries: int = setting(3, "attempts per SR (backoff 2, 4 s...)", group=NETWORK)
    forward_backoff_s: float = setting(2.0, "the first wait between forwarding attempts (then doubled)", cli=False)
    min_free_mb: float = setting(256.0, "refuse instances (status 'out of resources') below this much free disk",
                                 group=SPOOL)
    stop_timeout_s: float = setting(120.0, "a graceful stop waits this long for the running series", cli=False)
    max_associations: int = setting(16, "simultaneous connections, idle ones included", group=NETWORK)
    acse_timeout_s: float = setting(5.0, "close a connection that sends no association request within S s",
                                    flag="--acse-timeout", group=NETWORK)
    pdu_timeout_s: float = setting(10.0, "close a connection that leaves a PDU unfinished for S s after its first "
                                         "byte (the association request: --acse-timeout after connecting)",
                                   flag="--pdu-timeout", group=NETWORK)
    max_pending_per_host: int = setting(4, "connections from one address that have not yet sent their association "
                                           "request; more are closed at once", group=NETWORK)
    max_message_mb: float = setting(32.0, "abort an association whose DIMSE message (one instance: the sum of its "
                                          "P-DATA fragments) exceeds this many MiB", group=NETWORK)
    dimse_timeout_s: float = setting(30.0, "one DIMSE message exchange", cli=False)
    network_timeout_s: float = setting(60.0, "abort an association silent for S s; its series then waits for a "
                                             "resend", flag="--network-timeout", group=NETWORK)
    restart_backoff_s: float = setting(1.0, "a failed thread loop is retried after 1, 2, 4... times this",
                                       cli=False)
    restart_backoff_max_s: float = setting(60.0, "the longest wait before retrying a failed thread loop", cli=False)

    def __post_init__(self) -> None:
        if not 0 <= int(self.port) < 65536:
            raise ConfigError(f"--port {self.port} is not a TCP port (0-65535)")
        for t in (self.ae_title, *self.allow_ae):
            if not AE_TITLE.match(t or ""):
                raise ConfigError(f"AE title {t!r} must be 1-16 printable ASCII characters without '\\'")
        if self.quiet_s <= 0 or self.poll_s <= 0 or self.watch_settle_s < 0:
            raise ConfigError(f"--quiet-period must be > 0 (got {self.quiet_s})")
        if not self.incomplete_s >= self.quiet_s:
            raise ConfigError(f"--incomplete-wait must be >= --quiet-period {self.quiet_s} (got {self.incomplete_s})")
        if self.max_attempts < 1 or self.forward_retries < 1:
            raise ConfigError("--max-attempts and --forward-retries must be >= 1")
        if not self.retain_s >= 0:
            raise ConfigError(f"--retain-instances must be >= 0 seconds (got {self.retain_s})")
        if self.max_associations < 1:
            raise ConfigError(f"--max-associations must be >= 1 (got {self.max_associations})")
        if not self.max_message_mb > 0:
            raise ConfigError(f"--max-message-mb must be > 0 (got {self.max_message_mb})")
        if self.max_pending_per_host < 1:
            raise ConfigError(f"--max-pending-per-host must be >= 1 (got {self.max_pending_per_host})")
        for name, option in (("acse_timeout_s", "--acse-timeout"), ("dimse_timeout_s", "dimse_timeout_s"),
                             ("network_timeout_s", "--network-timeout"), ("pdu_timeout_s", "--pdu-timeout"),
                             ("restart_backoff_s", "restart_backoff_s")):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{option} must be > 0 seconds (got {getattr(self, name)})")
        allowed_networks(self.allow_hosts)
        if self.forward:
            parse_destination(self.forward)
        if not self.network and self.watch is None:
            raise ConfigError("nothing to serve: --no-network needs --watch DIR")
        if self.network and not self.allow_ae and not self.allow_any_ae and not is_loopback(self.host):
            raise ConfigError(f"listening on {self.host} needs --allow-ae TITLE (repeatable) or, knowingly, "
                              f"--allow-any-ae")


__all__ = ["ServeConfig", "allowed_networks", "is_loopback", "parse_destination", "setting"]
