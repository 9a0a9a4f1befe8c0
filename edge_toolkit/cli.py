"""The `edge-toolkit` command: a thin click layer over the library.

Subcommands are imported only when invoked, so `edge-toolkit classify` on a Raspberry Pi never
loads the training stack, and `edge-toolkit --help` is instant. Command modules must not import
TensorFlow at module level either: they import it inside the command body.
"""

from __future__ import annotations

import click

from edge_toolkit import __version__
from edge_toolkit.lazy import resolve

# name -> (module:attribute, one-line help shown by `edge-toolkit --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "pipeline": ("edge_toolkit.pipeline:pipeline",
                 "Train, export every variant, validate and benchmark, in one run folder."),
    "train": ("edge_toolkit.train.cli:train", "Train a model variant on a dataset folder."),
    "evaluate": ("edge_toolkit.train.cli:evaluate",
                 "Evaluate a trained run (or a .tflite) on each split of a dataset."),
    "export": ("edge_toolkit.quantize.cli:export",
               "Export a run to TFLite variants (float, int8, QAT, pruned) and validate each."),
    "classify": ("edge_toolkit.runtime.cli:classify",
                 "Classify image files, folders or globs with a .tflite model (no TensorFlow)."),
    "capture": ("edge_toolkit.runtime.cli:capture",
                "Capture from a Raspberry Pi camera, save, then classify each picture."),
    "calibrate": ("edge_toolkit.runtime.calibrate_cli:calibrate",
                  "Re-choose a model's threshold on your own labelled images (no TensorFlow)."),
    "serve": ("edge_toolkit.web.cli:serve",
              "Serve the clinic web station: upload, heatmap, history (needs [web])."),
    "bench": ("edge_toolkit.runtime.cli:bench",
              "Benchmark interpreter latency and memory of one or more .tflite models."),
    "benchmark": ("edge_toolkit.benchmark_cli:benchmark",
                  "Accuracy vs size vs latency table over every exported variant."),
    "audit": ("edge_toolkit.audit.cli:audit",
              "Audit a dataset for duplicates, split leakage and shortcut features."),
    "synth": ("edge_toolkit.synthetic:synth",
              "Write the built-in synthetic phantom X-ray dataset (for demos and tests)."),
    "card": ("edge_toolkit.card_cli:card", "Print the model card embedded in a .tflite file."),
}


class LazyGroup(click.Group):
    """A click group that imports a subcommand's module only when that command runs."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        return resolve(COMMANDS[cmd_name][0])

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, help_) for name, (_, help_) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edge-toolkit")
def main() -> None:
    """Bone-fracture X-ray classification from training to an offline device.

    \b
    Typical flow:
      edge-toolkit audit DATA                 # check the dataset for leakage first
      edge-toolkit train --data DATA          # train (needs fracture-edge-toolkit[train])
      edge-toolkit export runs/NAME           # .tflite variants with embedded model cards
      edge-toolkit classify MODEL.tflite X.jpg
      edge-toolkit pipeline                   # all of it, on the demo sample (a clone)

    Research and education use only: a result is decision support, not a diagnosis.
    """


if __name__ == "__main__":  # pragma: no cover
    main()
