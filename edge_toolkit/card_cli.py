"""`edge-toolkit card MODEL`: show what a model file says about itself."""

from __future__ import annotations

from pathlib import Path

import click

from edge_toolkit.card import CardError, ModelCard, read_card


def require_card(model: Path) -> ModelCard:
    """The card of a .tflite file, or a one-line click error saying why there is none."""
    try:
        found = read_card(model)
    except (OSError, CardError) as exc:
        raise click.ClickException(f"{model}: {exc}") from None
    if found is None:
        raise click.ClickException(f"{model}: no edge_toolkit model card in this file")
    return found


@click.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
def card(model: Path) -> None:
    """Print the model card embedded in MODEL (.tflite) as JSON."""
    click.echo(require_card(model).to_json())
