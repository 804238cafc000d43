"""The container, without a Docker engine (none runs on the build machines).

The Dockerfile passes hadolint; the wheel it installs is built here, installed into a fresh
virtual environment (its dependencies borrowed from the test environment), and the image's
command (``bzi-broadcast serve``) is run from there, outside the checkout, against PostgreSQL:
it migrates, answers ``/healthz`` and exits 0 on SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from bzi_broadcast.testing.smtp import SmtpCapture

from .conftest import TEST_SECRET_KEY

ROOT = Path(__file__).resolve().parents[1]


def test_dockerfile_passes_hadolint() -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    result = subprocess.run(
        [str(hadolint), "--failure-threshold", "info", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_as_non_root_with_a_health_check() -> None:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert "\nUSER 10001:10001\n" in text
    assert "HEALTHCHECK" in text
    assert "/healthz" in text
    assert 'CMD ["bzi-broadcast", "serve"]' in text


@pytest.mark.postgres
async def test_the_image_command_runs_from_the_installed_wheel(
    pg_database_url: str, tmp_path: Path
) -> None:
    wheels, venv, workdir = tmp_path / "wheels", tmp_path / "venv", tmp_path / "srv"
    workdir.mkdir()
    await _run(
        sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)
    )
    await _run(sys.executable, "-m", "venv", "--without-pip", str(venv))
    (wheel,) = wheels.glob("bzi_broadcast-*.whl")
    site = _site_packages(venv)
    python = str(venv / "bin" / "python")
    await _run(
        sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", str(wheel)
    )
    # The dependencies come from the test environment's own site-packages, appended after the
    # venv's (a path named in a .pth file is searched, its own .pth files are not processed, so
    # the checkout's editable install stays invisible): the wheel's code, templates and catalogs
    # are what runs. Installing every dependency again cost minutes per run; the wheel's
    # requirements are the ones the test environment was installed from.
    (site / "deps.pth").write_text(str(_site_packages(Path(sys.prefix))) + "\n", encoding="utf-8")
    where = await _output(python, "-c", "import bzi_broadcast as b; print(b.__file__)")
    assert Path(where).is_relative_to(site), where
    port = _free_port()
    async with SmtpCapture() as smtp:
        process = subprocess.Popen(
            [str(venv / "bin" / "bzi-broadcast"), "serve"],
            cwd=workdir,  # no templates or config beside it: everything comes from the wheel
            env={
                "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
                "HOME": str(workdir),
                "BZI_DATABASE_URL": pg_database_url,
                "BZI_SMTP_PORT": str(smtp.port),
                "BZI_SECURITY_SECRET_KEY": TEST_SECRET_KEY,
                "BZI_WEB_PORT": str(port),
                "BZI_EMAIL_PUBLIC_URL": "https://bzi.example.org",  # as in production
            },
            stderr=subprocess.PIPE,
        )
        try:
            await _healthy(f"http://127.0.0.1:{port}/healthz", process)
        finally:
            process.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(asyncio.to_thread(process.wait), 60)
        stderr = process.stderr.read().decode() if process.stderr else ""
    assert code == 0, stderr
    assert "Traceback" not in stderr


async def _run(*command: str) -> None:
    result = await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr


async def _output(*command: str) -> str:
    result = await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, timeout=120, cwd="/"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip()


def _site_packages(prefix: Path) -> Path:
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    return prefix / "lib" / version / "site-packages"


async def _healthy(url: str, process: subprocess.Popen[bytes]) -> None:
    async with aiohttp.ClientSession() as http, asyncio.timeout(60):
        while True:
            assert process.poll() is None, "serve exited before it was healthy"
            try:
                async with http.get(url) as answer:
                    if answer.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
