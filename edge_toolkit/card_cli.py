"""`edge-toolkit card MODEL`: show what a model file says about itself.

Exit codes: 0 the card was printed; 2 the file cannot be read, is not a model, has no card,
or its card is invalid (one `error: MODEL: problem` line per problem on stderr), as
`classify` refuses such a file.
"""

from __future__ import annotations

from pathlib import Path

import click

from edge_toolkit.card import CardError, ModelCard, load_card
from edge_toolkit.files import shown

EXIT_BAD_CARD = 2


class CardFailure(click.ClickException):
    """One or more lines on stderr naming the file, exit code 2."""

    exit_code = EXIT_BAD_CARD

    def show(self, file: object = None) -> None:
        click.echo(self.message, err=True)


def require_card(model: Path) -> ModelCard:
    """The card of a .tflite file, or a CardFailure with one line per problem."""
    try:
        return load_card(model)
    except CardError as exc:
        raise CardFailure("\n".join(f"error: {line}" for line in exc.lines(shown(model)))
                          ) from None
    except OSError as exc:
        raise CardFailure(f"error: {shown(model)}: cannot read ({exc.strerror or exc})"
                          ) from None


@click.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
def card(model: Path) -> None:
    """Print the model card embedded in MODEL (.tflite) as JSON; exit 2 if it has none or it
    is invalid."""
    click.echo(require_card(model).to_json())
