"""The ``ipt-train`` command line: thin wrappers over importable functions."""

from __future__ import annotations

import click

from ipt_data import __version__
from ipt_data.errors import UserErrorGroup


@click.group(cls=UserErrorGroup)
@click.version_option(__version__, prog_name="ipt-train")
def main() -> None:
    """Pretrain, fine-tune, evaluate and run the Image Processing Transformer (IPT)."""
