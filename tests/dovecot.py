"""A throwaway Dovecot IMAP server for the tests: Debian's ``dovecot`` started in the foreground
with a configuration in a temporary directory (no system service), plain IMAP on 127.0.0.1 and a
free port, Maildir storage, one user from a passwd file."""

from __future__ import annotations

import asyncio
import contextlib
import grp
import imaplib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from .conftest import require_or_skip, stop_process

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
USER = "bounces"
PASSWORD = "imap-test-password"


@dataclass(frozen=True)
class Dovecot:
    port: int
    user: str = USER
    password: str = PASSWORD

    def session(self) -> imaplib.IMAP4:
        imap = imaplib.IMAP4("127.0.0.1", self.port, timeout=10)
        imap.login(self.user, self.password)
        return imap

    def append(self, *messages: bytes, folder: str = "INBOX") -> None:
        imap = self.session()
        try:
            for raw in messages:
                typ, data = imap.append(folder, "", None, raw)
                assert typ == "OK", data
        finally:
            imap.logout()

    def count(self, folder: str) -> int:
        """Messages in ``folder`` (0 for one that does not exist yet)."""
        imap = self.session()
        try:
            typ, data = imap.select(f'"{folder}"', readonly=True)
            if typ != "OK":
                return 0
            typ, data = imap.search(None, "UNDELETED")
            return len(data[0].split()) if typ == "OK" and data and data[0] else 0
        finally:
            imap.logout()


def _tls(root: Path) -> str:
    """Dovecot's TLS settings, with a self-signed certificate for localhost made here."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    (root / "cert.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (root / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return f"ssl = yes\nssl_cert = <{root}/cert.pem\nssl_key = <{root}/key.pem"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _mail_owner() -> tuple[int, int]:
    """Who owns the mail: the current user, or, as root (Dovecot never serves mail as root),
    ``nobody``."""
    if os.getuid() != 0:
        return os.getuid(), os.getgid()
    nobody = pwd.getpwnam("nobody")
    return nobody.pw_uid, nobody.pw_gid


def _config(root: Path, port: int, *, tls: bool = False) -> str:
    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    # As root, Dovecot's own unprivileged accounts (made by Debian's package) run the login and
    # internal processes; as anyone else, that user runs everything.
    login_user = "dovenull" if os.getuid() == 0 else user
    internal_user = "dovecot" if os.getuid() == 0 else user
    uid, gid = _mail_owner()
    return f"""
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = imap
listen = 127.0.0.1
{_tls(root) if tls else "ssl = no"}
disable_plaintext_auth = no
auth_mechanisms = plain login
login_trusted_networks = 127.0.0.0/8
default_login_user = {login_user}
default_internal_user = {internal_user}
default_internal_group = {group}
first_valid_uid = 1
first_valid_gid = 1
mail_location = maildir:{root}/mail/%u
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/home/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service stats {{
  unix_listener stats-reader {{
    user = {user}
    mode = 0666
  }}
  unix_listener stats-writer {{
    user = {user}
    mode = 0666
  }}
}}
"""


@contextlib.asynccontextmanager
async def running_dovecot(*, tls: bool = False) -> AsyncIterator[Dovecot]:
    """Its own directory under /tmp: Dovecot's unprivileged processes must reach it (pytest's
    tmp_path sits below a directory only its owner may enter). ``tls``: STARTTLS offered, with a
    self-signed certificate for localhost."""
    require_or_skip(Path(DOVECOT).is_file(), "Dovecot (apt-get install dovecot-imapd)")
    root = Path(tempfile.mkdtemp(prefix="bzi-dovecot-"))
    try:
        async with _serving(root, tls=tls) as server:
            yield server
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextlib.asynccontextmanager
async def _serving(root: Path, *, tls: bool) -> AsyncIterator[Dovecot]:
    for folder in ("run", "state", "mail", "home"):
        (root / folder).mkdir(exist_ok=True)
    for folder in ("mail", "home"):
        os.chown(root / folder, *_mail_owner())
    os.chmod(root, 0o755)  # the login processes' accounts must reach base_dir
    port = _free_port()
    (root / "passwd").write_text(f"{USER}:{{PLAIN}}{PASSWORD}\n")
    config = root / "dovecot.conf"
    config.write_text(_config(root, port, tls=tls))
    process = subprocess.Popen(
        [DOVECOT, "-F", "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=(root / "stderr.log").open("wb"),
    )
    server = Dovecot(port=port)
    try:
        await _until_ready(server, process, root)
        yield server
    finally:
        stop_process(process)


async def _until_ready(server: Dovecot, process: subprocess.Popen[bytes], root: Path) -> None:
    """Until a session can log in and select the inbox (the mail process works)."""
    try:
        async with asyncio.timeout(30):
            while process.poll() is None:
                try:
                    await asyncio.to_thread(server.count, "INBOX")
                    return
                except (OSError, imaplib.IMAP4.error):
                    await asyncio.sleep(0.1)
    except TimeoutError:
        pass
    log = root / "dovecot.log"
    raise AssertionError(
        f"dovecot not ready (exit code {process.poll()}): {(root / 'stderr.log').read_text()}"
        + (log.read_text() if log.exists() else "")
    )
