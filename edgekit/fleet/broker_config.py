"""`edgekit fleet broker-config`: a Mosquitto 2 configuration that authenticates a fleet.

    edgekit fleet broker-config --fleet NAME --devices a,b,c --out DIR
        [--port 1883] [--bind 0.0.0.0] [--tls [--tls-port 8883] [--host NAME ...]]
        [--conf-dir PATH] [--admin NAME] [--max-packet-bytes N] [--json]

Writes into DIR (which must not hold these files yet):

- ``mosquitto.conf``: no anonymous clients, the password file and ACL below, one listener,
  ``max_packet_size`` (the broker refuses larger packets from any client), and
  ``use_username_as_clientid`` so a client id is always its user's name: a client holding
  device B's credentials cannot take device A's client id and kick it off the broker.
- ``acl``: a device (username = device name) may publish only ``status``, ``telemetry``,
  ``event`` and ``offload/req`` under ``edgekit/v1/<fleet>/<device>/`` and read only its own
  ``cmd``, ``ota`` and ``offload/resp``; the ``admin`` user (fleet CLI, coordinator) reads
  and writes the whole fleet. Mosquitto drops a denied publish (MQTT 5 answers "not
  authorized") and never delivers a topic its ACL does not let the subscriber read.
- ``passwords``: Mosquitto's ``$7$`` format (PBKDF2-SHA512, 101 iterations, 12-byte salt,
  what ``mosquitto_passwd`` writes), for random 32-character passwords.
- ``devices/<device>/``: ``mqtt.password`` and ``agent-mqtt.toml`` (the ``[mqtt]`` section
  for that device's ``agent.toml``); ``admin/`` likewise for the operator.
- With ``--tls``: a fleet CA (``ca.pem``/``ca.key``), the broker's certificate and one client
  certificate per device (CN = device name). The listener then requires a client certificate
  (mTLS) and takes the username from the certificate's CN (``use_identity_as_username``), so
  the same ACL applies; no passwords are needed on that listener. Keep ``ca.key`` offline.

Paths inside ``mosquitto.conf`` point at ``--conf-dir`` (default: DIR itself), where the files
are to live on the broker host. Passwords are never printed; the summary names the files.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit_agent.defaults import DEVICE_NAME_RE, DEVICE_NAME_RULE, MQTT_MAX_PACKET_BYTES
from edgekit_agent.errors import ConfigError

from ..defaults import MQTT_PORT

MOSQUITTO_ITERATIONS = 101  # mosquitto_passwd's default; the passwords are random, not chosen
DEVICE_WRITES = ("status", "telemetry", "event", "offload/req", "offload/probe")
DEVICE_READS = ("cmd", "ota", "offload/resp")
CERT_DAYS = 825


@dataclass(frozen=True)
class BrokerPlan:
    fleet: str
    devices: tuple[str, ...]
    out: Path
    conf_dir: Path
    port: int = MQTT_PORT
    bind: str = "0.0.0.0"
    admin: str = "admin"
    tls: bool = False
    tls_port: int = 8883
    hosts: tuple[str, ...] = ("localhost", "127.0.0.1")
    max_packet_bytes: int = MQTT_MAX_PACKET_BYTES

    def __post_init__(self) -> None:
        for key, name in [("--fleet", self.fleet), ("--admin", self.admin)] + [
                ("--devices", d) for d in self.devices]:
            if not DEVICE_NAME_RE.match(name):
                raise ConfigError(DEVICE_NAME_RULE, key=key, value=name)
        if not self.devices or len(set(self.devices)) != len(self.devices):
            raise ConfigError("must list distinct device names", key="--devices",
                              value=",".join(self.devices))
        if self.admin in self.devices:
            raise ConfigError("must differ from every device name", key="--admin", value=self.admin)
        if not 1024 <= self.max_packet_bytes <= 268_435_455:
            raise ConfigError("must be 1024..268435455 (MQTT's limit)", key="--max-packet-bytes",
                              value=self.max_packet_bytes)


def password_line(user: str, password: str, salt: bytes | None = None) -> str:
    """One line of a Mosquitto 2 password file (``$7$``: PBKDF2-SHA512)."""
    salt = salt or secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, MOSQUITTO_ITERATIONS)
    b64 = base64.b64encode
    return f"{user}:$7${MOSQUITTO_ITERATIONS}${b64(salt).decode()}${b64(digest).decode()}"


def acl_text(fleet: str, admin: str) -> str:
    prefix = f"edgekit/v1/{fleet}/%u"
    lines = [f"# edgekit fleet {fleet!r}: a device is a user named like the device.",
             f"user {admin}", f"topic readwrite edgekit/v1/{fleet}/#", "",
             "# every other user: its own topics only"]
    lines += [f"pattern write {prefix}/{kind}" for kind in DEVICE_WRITES]
    lines += [f"pattern read {prefix}/{kind}" for kind in DEVICE_READS]
    return "\n".join(lines) + "\n"


def mosquitto_conf(plan: BrokerPlan) -> str:
    d = plan.conf_dir
    lines = [f"# edgekit fleet {plan.fleet!r}: written by `edgekit fleet broker-config`.",
             f"# devices: {', '.join(plan.devices)}; operator: {plan.admin}",
             "per_listener_settings false", "allow_anonymous false",
             f"acl_file {d / 'acl'}", f"max_packet_size {plan.max_packet_bytes}", ""]
    if plan.tls:
        lines += [f"listener {plan.tls_port} {plan.bind}", f"cafile {d / 'ca.pem'}",
                  f"certfile {d / 'server.pem'}", f"keyfile {d / 'server.key'}",
                  "tls_version tlsv1.2", "require_certificate true", "use_identity_as_username true"]
    else:
        lines += [f"password_file {d / 'passwords'}", f"listener {plan.port} {plan.bind}"]
    lines.append("use_username_as_clientid true")
    return "\n".join(lines) + "\n"


def agent_snippet(plan: BrokerPlan, device: str, files: Path) -> str:
    """The ``[mqtt]`` section of one device's agent.toml (paths where the device keeps them)."""
    host = plan.hosts[0]
    lines = ["[mqtt]", f'host = "{host}"']
    if plan.tls:
        lines += [f"port = {plan.tls_port}", "tls = true", f'ca_file = "{files / "ca.pem"}"',
                  f'cert_file = "{files / "client.pem"}"', f'key_file = "{files / "client.key"}"']
    else:
        lines += [f"port = {plan.port}", f'username = "{device}"',
                  f'password_file = "{files / "mqtt.password"}"']
    lines.append(f"max_packet_bytes = {plan.max_packet_bytes}")
    return "\n".join(lines) + "\n"


def write(plan: BrokerPlan) -> dict[str, Any]:
    """Write every file; refuse (changing nothing) if any of them exists already."""
    users = (*plan.devices, plan.admin)
    targets = [plan.out / n for n in ("mosquitto.conf", "acl", "passwords", "ca.pem", "ca.key")]
    targets += [plan.out / _user_dir(plan, u) for u in users]
    existing = [str(p) for p in targets if p.exists()]
    if existing:
        raise ConfigError("would overwrite existing files; pick an empty --out", key="--out",
                          value=existing[0])
    plan.out.mkdir(parents=True, exist_ok=True)
    passwords = {} if plan.tls else {u: secrets.token_urlsafe(24) for u in users}
    _write(plan.out / "mosquitto.conf", mosquitto_conf(plan))
    _write(plan.out / "acl", acl_text(plan.fleet, plan.admin))
    if passwords:
        _write(plan.out / "passwords", "".join(password_line(u, p) + "\n"
                                               for u, p in passwords.items()), secret=True)
    pki = _write_pki(plan, users) if plan.tls else {}
    summary: dict[str, Any] = {"fleet": plan.fleet, "out": str(plan.out), "tls": plan.tls,
                               "max_packet_bytes": plan.max_packet_bytes, "users": {}}
    for user in users:
        folder = plan.out / _user_dir(plan, user)
        folder.mkdir(parents=True)
        if user in passwords:
            _write(folder / "mqtt.password", passwords[user] + "\n", secret=True)
        _write(folder / "agent-mqtt.toml", agent_snippet(plan, user, Path("/etc/edgekit")))
        for name, data in pki.get(user, {}).items():
            _write(folder / name, data, secret=name.endswith(".key"))
        summary["users"][user] = str(folder)
    return summary


def _user_dir(plan: BrokerPlan, user: str) -> str:
    return "admin" if user == plan.admin else f"devices/{user}"


def _write(path: Path, text: str | bytes, secret: bool = False) -> None:
    data = text.encode() if isinstance(text, str) else text
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if secret else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


# --- PKI for --tls ------------------------------------------------------------------------------

def _write_pki(plan: BrokerPlan, users: tuple[str, ...]) -> dict[str, dict[str, bytes]]:
    """A fleet CA, the broker's certificate and one client certificate per user (CN = user)."""
    ca_key, ca_cert = _issue(f"edgekit fleet {plan.fleet} CA", None, None, ca=True)
    ca_pem = _pem_cert(ca_cert)
    _write(plan.out / "ca.pem", ca_pem)
    _write(plan.out / "ca.key", _pem_key(ca_key), secret=True)
    server_key, server_cert = _issue(plan.hosts[0], ca_key, ca_cert, sans=plan.hosts)
    _write(plan.out / "server.pem", _pem_cert(server_cert))
    _write(plan.out / "server.key", _pem_key(server_key), secret=True)
    out = {}
    for user in users:
        key, cert = _issue(user, ca_key, ca_cert, client=True)
        out[user] = {"ca.pem": ca_pem, "client.pem": _pem_cert(cert), "client.key": _pem_key(key)}
    return out


def _issue(cn: str, ca_key: Any, ca_cert: Any, *, ca: bool = False, client: bool = False,
           sans: tuple[str, ...] = ()) -> tuple[Any, Any]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(name)
               .issuer_name(ca_cert.subject if ca_cert is not None else name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=3650 if ca else CERT_DAYS))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
    else:
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName([_san(h) for h in sans]),
                                        critical=False)
    return key, builder.sign(ca_key if ca_key is not None else key, hashes.SHA256())


def _san(host: str) -> Any:
    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _pem_cert(cert: Any) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    return cert.public_bytes(Encoding.PEM)


def _pem_key(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization as s

    return key.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption())


def render(summary: dict[str, Any]) -> str:
    lines = [f"broker config for fleet {summary['fleet']!r} in {summary['out']} "
             f"({'mTLS' if summary['tls'] else 'passwords'}; max packet {summary['max_packet_bytes']} B)"]
    lines += [f"  {user}: {folder}/agent-mqtt.toml" for user, folder in summary["users"].items()]
    return "\n".join(lines)


def to_json(summary: dict[str, Any]) -> str:
    return json.dumps(summary, indent=2, sort_keys=True)
