"""What is really in an exported file: weight sparsity, sizes, input/output types. No TensorFlow.

Sparsity is measured in the file, not in Keras: the weight (filter) tensor of every CONV_2D,
DEPTHWISE_CONV_2D, FULLY_CONNECTED and TRANSPOSE_CONV op, followed back through DEQUANTIZE
for float16 files, and the fraction of exact zeros among all their elements. Int8 files store
symmetric weights (zero point 0), so a pruned zero stays an exact zero; post-training
quantization also rounds some tiny weights to zero, which shows up here honestly. The file
does not get smaller from zeros (TFLite stores weights dense): gzip size shows the gain.
"""

from __future__ import annotations

import gzip
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_toolkit.card import CardError, split_tflite
from edge_toolkit.files import read_regular
from edge_toolkit.runtime.interpreter import create_interpreter, tensor_io


class InspectError(ValueError):
    """The bytes are not a loadable TFLite model; the message says why."""


def _interpreter(bare: bytes, delegates: bool) -> object:
    try:
        return create_interpreter(bare, 1, delegates=delegates)[0]
    except ValueError as exc:
        raise InspectError(f"the TFLite interpreter cannot load this model ({exc}); the file "
                           "is truncated or corrupted") from None

# op name -> index of its weight tensor among the op's inputs
WEIGHT_OPS = {"CONV_2D": 1, "DEPTHWISE_CONV_2D": 1, "FULLY_CONNECTED": 1, "TRANSPOSE_CONV": 1,
              "CONV_3D": 1}
_PASS_THROUGH = ("DEQUANTIZE", "DENSIFY")


@dataclass(frozen=True)
class WeightTensor:
    name: str
    op: str
    shape: tuple[int, ...]
    dtype: str
    size: int
    zeros: int

    @property
    def sparsity(self) -> float:
        return self.zeros / self.size if self.size else 0.0


def weight_tensors(bare: bytes) -> list[WeightTensor]:
    """The weight tensor of every conv/dense op in a bare flatbuffer (each tensor once)."""
    interp: Any = _interpreter(bare, delegates=False)
    ops = interp._get_ops_details()  # stable in LiteRT and tflite-runtime; no public twin
    producer = {int(t): op for op in ops for t in op["outputs"]}
    seen: set[int] = set()
    out = []
    for op in ops:
        pos = WEIGHT_OPS.get(op["op_name"])
        if pos is None or len(op["inputs"]) <= pos:
            continue
        idx = int(op["inputs"][pos])
        while idx in producer and producer[idx]["op_name"] in _PASS_THROUGH:
            idx = int(producer[idx]["inputs"][0])
        if idx < 0 or idx in seen:
            continue
        seen.add(idx)
        try:
            arr = np.asarray(interp.get_tensor(idx))
        except ValueError:  # not a constant: nothing to measure
            continue
        detail = interp._get_tensor_details(idx, 0)
        out.append(WeightTensor(detail["name"], op["op_name"], tuple(arr.shape),
                                arr.dtype.name, int(arr.size), int(np.count_nonzero(arr == 0))))
    return out


def sparsity(bare: bytes, weights: list[WeightTensor] | None = None) -> float:
    """Fraction of exact zeros over all conv/dense weight elements of the file."""
    weights = weight_tensors(bare) if weights is None else weights
    total = sum(w.size for w in weights)
    return sum(w.zeros for w in weights) / total if total else 0.0


def gzip_size(data: bytes) -> int:
    """Bytes after `gzip -9`: what a sparse model costs to ship or store compressed."""
    return len(gzip.compress(data, 9))


def inspect_bytes(data: bytes) -> dict[str, Any]:
    """Size, gzip size, sparsity, weight dtypes and input/output types of a `.tflite`'s bytes
    (card allowed but not required)."""
    try:
        bare, card = split_tflite(data)
    except CardError as exc:
        raise InspectError(str(exc)) from None
    weights = weight_tensors(bare)
    interp: Any = _interpreter(bare, delegates=True)
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    dtypes: dict[str, int] = {}
    for w in weights:
        dtypes[w.dtype] = dtypes.get(w.dtype, 0) + w.size
    return {
        "size_bytes": len(data), "gzip_bytes": gzip_size(data),
        "model_bytes": len(bare), "card_bytes": len(data) - len(bare),
        "sparsity": sparsity(bare, weights), "weight_elements": sum(w.size for w in weights),
        "weight_dtypes": dtypes, "weight_tensors": len(weights),
        "input": tensor_io(inp), "output": tensor_io(out),
        "variant": card.variant if card else None,
    }


def inspect_file(path: str | Path) -> dict[str, Any]:
    return inspect_bytes(read_regular(path)) | {"path": str(path)}


def layer_table(bare: bytes) -> list[dict[str, Any]]:
    """Per weight tensor: name, op, shape, dtype, sparsity (for a closer look at pruning)."""
    return [asdict(w) | {"sparsity": w.sparsity} for w in weight_tensors(bare)]
