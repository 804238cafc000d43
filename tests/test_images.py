"""Local announcement images are read only from inside the image directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from bzi_broadcast.channels.images import read_local_image
from bzi_broadcast.errors import PermanentError


def test_an_image_below_the_root_is_read(tmp_path: Path) -> None:
    (tmp_path / "bilder").mkdir()
    (tmp_path / "bilder" / "podium.png").write_bytes(b"\x89PNG data")
    assert read_local_image(tmp_path, "bilder/podium.png") == b"\x89PNG data"


@pytest.mark.parametrize("src", ["/etc/passwd", "../geheim.txt", "bilder/../../geheim.txt"])
def test_a_path_leading_outside_the_root_is_refused(tmp_path: Path, src: str) -> None:
    root = tmp_path / "ankuendigungen"
    root.mkdir()
    (tmp_path / "geheim.txt").write_text("secret")
    with pytest.raises(PermanentError, match="außerhalb des Bildverzeichnisses"):
        read_local_image(root, src)


def test_a_missing_image_is_a_permanent_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(PermanentError, match=r"fehlt\.png"):
        read_local_image(tmp_path, "fehlt.png")
