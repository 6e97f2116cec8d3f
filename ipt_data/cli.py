"""The ``ipt-data`` command line: thin wrappers over importable functions."""

from __future__ import annotations

import click

from ipt_data import __version__
from ipt_data.errors import UserErrorGroup


@click.group(cls=UserErrorGroup)
@click.version_option(__version__, prog_name="ipt-data")
def main() -> None:
    """Build the six IPT pretraining tasks' patch pairs as WebDataset shard sets."""
