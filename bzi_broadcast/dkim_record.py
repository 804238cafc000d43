"""``bzi-broadcast dkim record`` and ``dkim keygen``: the DNS side of the DKIM settings."""

from __future__ import annotations

import argparse
import os
import sys

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from bzi_broadcast.channels.dkim import configured_keys, dns_record, load_private_key, public_value
from bzi_broadcast.config import load_settings
from bzi_broadcast.i18n import gettext as _

EXIT_OK = 0
EXIT_BAD_INPUT = 2
RSA_BITS = 2048


def run_record(args: argparse.Namespace) -> int:
    """Print one TXT record per configured key, ready for a zone file."""
    settings = load_settings(args.config)
    keys = configured_keys(settings.email)
    if not keys:
        print(
            _(
                "DKIM ist nicht eingerichtet: setzen Sie email.dkim_domain, email.dkim_selector "
                "und email.dkim_private_key (oder BZI_EMAIL_DKIM_PRIVATE_KEY_FILE)"
            ),
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    for key in keys:
        private = load_private_key(key.private_key, key.kind)
        print(dns_record(key.domain, key.selector, private))
    return EXIT_OK


def run_keygen(args: argparse.Namespace) -> int:
    """Write a new private key (PKCS#8 PEM) to a file only its owner can read."""
    key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey = (
        ed25519.Ed25519PrivateKey.generate()
        if args.ed25519
        else rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        descriptor = os.open(args.file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        print(
            _("{path}: nicht geschrieben ({reason})").format(path=args.file, reason=exc.strerror),
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    with os.fdopen(descriptor, "wb") as file:
        file.write(pem)
    variable = (
        "BZI_EMAIL_DKIM_ED25519_PRIVATE_KEY_FILE"
        if args.ed25519
        else ("BZI_EMAIL_DKIM_PRIVATE_KEY_FILE")
    )
    print(
        _("Schlüssel geschrieben: {path} – setzen Sie {variable}={path}; p={public}").format(
            path=args.file, variable=variable, public=public_value(key)
        )
    )
    return EXIT_OK
