"""Micro-benchmark: DKIM signing time per message for the seed newsletter.

Compares, per recipient message, the fill without DKIM, our fill with the body pieces
canonicalised and hashed once per announcement (RSA-SHA256; RSA and Ed25519), our signer over
the whole filled message, and dkimpy's ``dkim.sign`` over the whole message (what the service
did before issue 15). Median of ``--rounds`` rounds of ``--messages`` messages.

    .venv/bin/python -m bench.dkim_sign [--messages 300] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from bzi_broadcast.channels.dkim import DKIM_HEADERS, DkimKey, DkimSigner
from bzi_broadcast.channels.email_mime import MessageTemplate, Sender
from bzi_broadcast.content import load_announcement
from bzi_broadcast.render import Renderer

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "config" / "examples" / "weltoffene-kommunen.yaml"
URL = "https://bzi.example.org/abmelden/v1.1.AbCdEfGhIjKlMnOpQrStUvWxYz0123456789.sig"


def pem(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def per_message_us(work: Callable[[int], object], count: int, rounds: int) -> float:
    timings = []
    for _ in range(rounds):
        start = time.perf_counter()
        for i in range(count):
            work(i)
        timings.append((time.perf_counter() - start) / count * 1e6)
    return statistics.median(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rsa_pem = pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    rsa_key = DkimKey(domain="bzi.example.org", selector="news", private_key=rsa_pem)
    ed_key = DkimKey(
        domain="bzi.example.org",
        selector="newsed",
        private_key=pem(ed25519.Ed25519PrivateKey.generate()),
        kind="ed25519",
    )
    rendition = Renderer().email(load_announcement(EXAMPLE))

    def build(signer: DkimSigner | None) -> MessageTemplate:
        return MessageTemplate.build(
            rendition,
            sender=Sender(address="newsletter@bzi.example.org", name="BZI"),
            list_id="newsletter.bzi.example.org",
            message_id_domain="bzi.example.org",
            dkim=signer,
        )

    plain, one, both = (
        build(None),
        build(DkimSigner([rsa_key])),
        build(DkimSigner([rsa_key, ed_key])),
    )
    whole = DkimSigner([rsa_key])

    def fill(template: MessageTemplate) -> Callable[[int], bytes]:
        return lambda i: template.fill_data(
            to=f"person{i}@example.org", unsubscribe_url=f"{URL}{i}", preferences_url=f"{URL}{i}p"
        )

    message = plain.fill(to="a@example.org", unsubscribe_url=URL, preferences_url=URL)
    figures = {
        "fill_data, no DKIM": per_message_us(fill(plain), args.messages, args.rounds),
        "fill_data + RSA (body pieces hashed once)": per_message_us(
            fill(one), args.messages, args.rounds
        ),
        "fill_data + RSA + Ed25519": per_message_us(fill(both), args.messages, args.rounds),
        "our signer, whole message (RSA)": per_message_us(
            lambda _i: whole.sign(message), args.messages, args.rounds
        ),
        "dkimpy dkim.sign, whole message (RSA)": per_message_us(
            lambda _i: dkim.sign(
                message, b"news", b"bzi.example.org", rsa_pem, include_headers=list(DKIM_HEADERS)
            ),
            max(args.messages // 10, 10),
            args.rounds,
        ),
    }
    print(
        f"bench/dkim_sign  {platform.machine()} {os.cpu_count()} cores, python "
        f"{platform.python_version()}, message {len(message)} B, load average "
        f"{os.getloadavg()[0]:.1f}"
    )
    for name, us in figures.items():
        print(f"  {name:44} {us:8.0f} µs/message")


if __name__ == "__main__":
    main()
