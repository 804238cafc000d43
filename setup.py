"""Packs the top-level ``templates/`` into the wheel as ``bzi_broadcast/_templates``.

The templates live beside the package so staff can restyle them in a checkout; an installed
service (the container) finds them inside the package (see ``render.environment.templates_root``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithTemplates(build_py):
    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "bzi_broadcast" / "_templates"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(Path(__file__).parent / "templates", target)


setup(cmdclass={"build_py": BuildWithTemplates})
