"""`edge-toolkit card MODEL`: show what a model file says about itself."""

from __future__ import annotations

from pathlib import Path

import click

from edge_toolkit.card import CardError, read_card


@click.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
def card(model: Path) -> None:
    """Print the model card embedded in MODEL (.tflite) as JSON."""
    try:
        found = read_card(model)
    except (OSError, CardError) as exc:
        raise click.ClickException(f"{model}: {exc}") from None
    if found is None:
        raise click.ClickException(f"{model}: no edge_toolkit model card in this file")
    click.echo(found.to_json())
