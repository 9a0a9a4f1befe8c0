"""The model that ships inside the package, used when a command is given none.

`classify X.jpg` must work out of the box in a clinic, so an int8 MobileNetV2 with its card
lives in `edge_toolkit/models/`. Which file is used is decided here, in one place.
"""

from __future__ import annotations

from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
MODEL_SUFFIX = ".tflite"


class NoBundledModelError(FileNotFoundError):
    """This install carries no bundled model (e.g. a source checkout without one)."""


def bundled_model() -> Path:
    """Path of the bundled model; raises NoBundledModelError with what to do instead."""
    found = sorted(MODELS_DIR.glob(f"*{MODEL_SUFFIX}")) if MODELS_DIR.is_dir() else []
    if not found:
        raise NoBundledModelError(
            f"no model given and none is bundled in {MODELS_DIR}; pass a .tflite model "
            "(e.g. `edge-toolkit classify MODEL.tflite IMAGES...`)")
    return found[0]


def split_model_and_paths(args: tuple[str, ...], model: str | None
                          ) -> tuple[Path, list[str]]:
    """`[MODEL.tflite] PATH...` -> (model, paths): an explicit --model wins, then a first
    argument ending in .tflite, else the bundled model and every argument is an image path."""
    if model:
        return Path(model), list(args)
    if args and args[0].lower().endswith(MODEL_SUFFIX):
        return Path(args[0]), list(args[1:])
    return bundled_model(), list(args)
