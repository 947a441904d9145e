"""The ``lorafleet`` command line. Subcommands import what they need lazily, so
``lorafleet version`` works with nothing but the core dependencies installed."""

from __future__ import annotations

import platform

import click

from lorafleet_operator import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """lorafleet: serve one base LLM with many LoRA adapters on KubeRay."""


@main.command()
def version() -> None:
    """Print the lorafleet version."""
    click.echo(f"lorafleet {__version__} (python {platform.python_version()})")


if __name__ == "__main__":  # python -m lorafleet_operator.cli
    main()
