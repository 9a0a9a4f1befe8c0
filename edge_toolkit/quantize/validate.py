"""Run an exported `.tflite` through the device's interpreter and judge it. No TensorFlow.

Validation uses `ai-edge-litert` (or `tflite-runtime`), never TensorFlow's own interpreter:
the point is that the runtime on the device agrees with the numbers in the report. Inputs
of full-integer models are quantized with the input tensor's own scale and zero point and
integer outputs are dequantized with the output tensor's, so the same code feeds every
variant. (`edge_toolkit.runtime.Classifier` does the same for single images on the device.)
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_toolkit.card import CARD_MEMBER, TFLITE_IDENTIFIER, CardError, ModelCard, split_tflite
from edge_toolkit.metrics import (
    apply_temperature,
    at_threshold,
    roc_auc,
    threshold_balanced,
    threshold_for_sensitivity,
)
from edge_toolkit.preprocess import quantize
from edge_toolkit.quantize.variants import FAILED_VALIDATION, VALIDATED


class TFLiteFileError(ValueError):
    """A file is not a loadable TFLite model: wrong file, truncated or corrupted."""


class MissingCardError(CardError):
    """A loadable TFLite model without an edge_toolkit model card."""


def interpreter_class() -> type:
    """The device runtime's interpreter (LiteRT, else tflite-runtime; never TensorFlow's):
    validation must run exactly what the device runs."""
    from edge_toolkit.runtime.interpreter import BackendMissingError
    from edge_toolkit.runtime.interpreter import interpreter_class as runtime_choice

    try:
        return runtime_choice()[0]
    except BackendMissingError as exc:
        raise ImportError(str(exc)) from None


def make_interpreter(model: bytes, num_threads: int | None = None,
                     delegates: bool = True) -> Any:
    """An allocated interpreter for flatbuffer bytes; TFLiteFileError if it will not load.

    `delegates=False` skips XNNPACK so every op stays visible (for weight inspection)."""
    cls = interpreter_class()
    kwargs: dict[str, Any] = {"model_content": model, "num_threads": num_threads or 2}
    if not delegates:
        try:
            from ai_edge_litert.interpreter import OpResolverType
        except ImportError:  # tflite-runtime
            from tflite_runtime.interpreter import OpResolverType  # type: ignore
        kwargs["experimental_op_resolver_type"] = \
            OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    try:
        interp = cls(**kwargs)
        interp.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TFLiteFileError(f"the TFLite interpreter cannot load this model ({reason}); "
                              "the file is truncated or corrupted") from None
    return interp


def check_flatbuffer(bare: bytes) -> None:
    """Cheap structural checks that name the problem before the interpreter does."""
    if len(bare) < 8 or bare[4:8] != TFLITE_IDENTIFIER:
        raise TFLiteFileError("not a TFLite model: no 'TFL3' flatbuffer identifier at bytes "
                              "4-8 (wrong file, or its start is damaged)")
    (root,) = struct.unpack_from("<I", bare, 0)
    if root + 4 > len(bare):
        raise TFLiteFileError(f"TFLite flatbuffer is truncated: its root table is at byte "
                              f"{root}, the file has {len(bare)} bytes")


def read_model(source: str | Path | bytes, require_card: bool = True, verify: bool = True
               ) -> tuple[bytes, ModelCard | None]:
    """(bare flatbuffer, card) of a `.tflite` file or its bytes, with a clear error for a
    wrong, truncated or corrupted file, or (when `require_card`) a file with no card.

    `verify` loads the flatbuffer in the interpreter (a few ms), so a file cut short inside
    the model, which the header checks cannot see, is reported as truncated, not as cardless.
    """
    name = "<bytes>"
    if isinstance(source, (str, Path)):
        name = str(source)
        try:
            data = Path(source).read_bytes()
        except OSError as exc:
            raise TFLiteFileError(f"{name}: cannot read ({exc.strerror or exc})") from None
    else:
        data = bytes(source)
    if not data:
        raise TFLiteFileError(f"{name}: empty file")
    try:
        check_flatbuffer(data)
        bare, card = split_tflite(data)
        check_flatbuffer(bare)
    except (TFLiteFileError, CardError) as exc:
        raise TFLiteFileError(f"{name}: {exc}") from None
    if card is None and CARD_MEMBER.encode() in data[-(1 << 20):]:
        raise TFLiteFileError(
            f"{name}: the model card archive at the end of the file is truncated or "
            "corrupted (the file was cut short or altered after export)")
    if verify:
        try:
            make_interpreter(bare, num_threads=1, delegates=False)
        except TFLiteFileError as exc:
            raise TFLiteFileError(f"{name}: {exc}") from None
    if card is None and require_card:
        raise MissingCardError(
            f"{name}: no edge_toolkit model card in this file, so its labels, "
            "preprocessing and threshold are unknown; export it with `edge-toolkit "
            "export`, or embed a card with edge_toolkit.card.embed_card")
    return bare, card


@dataclass(frozen=True)
class TensorIO:
    """How to feed one input (or read one output): dtype and quantization."""

    index: int
    shape: tuple[int, ...]
    dtype: str
    scale: float
    zero_point: int

    @property
    def quantized(self) -> bool:
        return self.dtype in ("uint8", "int8", "int16") and self.scale > 0

    @classmethod
    def from_detail(cls, d: dict[str, Any]) -> TensorIO:
        scale, zp = d.get("quantization", (0.0, 0))
        return cls(int(d["index"]), tuple(int(s) for s in d["shape"]),
                   np.dtype(d["dtype"]).name, float(scale), int(zp))

    def to_dict(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "shape": list(self.shape), "scale": self.scale,
                "zero_point": self.zero_point}


def _is_probability(d: dict[str, Any]) -> bool:
    """A probability output has one element (sigmoid) or two (softmax) and is not a map."""
    return len(d["shape"]) != 4 and int(np.prod(d["shape"][1:])) in (1, 2)


def split_outputs(outs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(probability output, feature-map output or None), chosen by shape, never by index:
    the converter may reorder outputs. The feature map is the one rank-4 output."""
    if len(outs) == 1:
        return outs[0], None
    if len(outs) == 2:
        maps = [d for d in outs if len(d["shape"]) == 4]
        probs = [d for d in outs if _is_probability(d)]
        if len(maps) == 1 and len(probs) == 1:
            return probs[0], maps[0]
    shapes = ", ".join(str(tuple(int(s) for s in d["shape"])) for d in outs)
    raise TFLiteFileError(f"expected a probability output and at most one (1, h, w, C) "
                          f"feature map, found outputs {shapes}")


def io_details(interp: Any) -> tuple[TensorIO, TensorIO]:
    """(input, probability output) of a single-input classifier (with or without the
    feature-map output)."""
    ins = interp.get_input_details()
    if len(ins) != 1:
        raise TFLiteFileError(f"expected one input, found {len(ins)}")
    prob, _ = split_outputs(interp.get_output_details())
    return TensorIO.from_detail(ins[0]), TensorIO.from_detail(prob)


def feature_io(interp: Any) -> TensorIO | None:
    """The feature-map output (the input of the head's global pooling), if the file has one."""
    _, feat = split_outputs(interp.get_output_details())
    return None if feat is None else TensorIO.from_detail(feat)


def quantize_input(x: np.ndarray, io: TensorIO) -> np.ndarray:
    """Preprocessed float images -> what the input tensor takes (its own scale/zero point)."""
    if not io.quantized:
        return np.asarray(x, dtype=io.dtype)
    return quantize(np.asarray(x, np.float32), io.scale, io.zero_point, io.dtype)


def dequantize_output(y: np.ndarray, io: TensorIO) -> np.ndarray:
    if not io.quantized:
        return np.asarray(y, dtype=np.float64)
    return (np.asarray(y, np.float64) - io.zero_point) * io.scale


def predict_tflite(model: bytes | Any, x: np.ndarray, batch_size: int = 32,
                   num_threads: int | None = None) -> np.ndarray:
    """Raw sigmoid outputs (float64, shape (n,)) of a bare flatbuffer (or an interpreter) on
    preprocessed images `x` (n, H, W, C), batched by resizing the input tensor."""
    interp = make_interpreter(model, num_threads) if isinstance(model, bytes) else model
    inp, _ = io_details(interp)
    out = np.zeros(len(x), np.float64)
    current = None
    for start in range(0, len(x), batch_size):
        chunk = x[start:start + batch_size]
        shape = (len(chunk), *inp.shape[1:])
        if shape != current:
            try:
                interp.resize_tensor_input(inp.index, list(shape))
                interp.allocate_tensors()
            except (ValueError, RuntimeError):  # fixed batch dimension: one image at a time
                return _predict_one_by_one(interp, x)
            current = shape
        interp.set_tensor(inp.index, quantize_input(chunk, inp))
        interp.invoke()
        _, o = io_details(interp)
        out[start:start + len(chunk)] = dequantize_output(
            interp.get_tensor(o.index), o).reshape(len(chunk), -1)[:, 0]
    return out


def _predict_one_by_one(interp: Any, x: np.ndarray) -> np.ndarray:
    inp, _ = io_details(interp)
    interp.resize_tensor_input(inp.index, [1, *inp.shape[1:]])
    interp.allocate_tensors()
    inp, o = io_details(interp)
    out = np.zeros(len(x), np.float64)
    for i in range(len(x)):
        interp.set_tensor(inp.index, quantize_input(x[i:i + 1], inp))
        interp.invoke()
        out[i] = dequantize_output(interp.get_tensor(o.index), o).reshape(-1)[0]
    return out


def compare_to_parent(y: np.ndarray, p: np.ndarray, p_parent: np.ndarray, card: ModelCard,
                      tolerance: float = 0.02) -> dict[str, Any]:
    """Judge a variant's raw outputs `p` against its float parent's `p_parent` on one split.

    Both go through the card's temperature first (the runtime reports calibrated
    probabilities and compares those to the threshold). `agreement` is the fraction of images
    with the same decision at the card's threshold; `mean_abs_diff` is the mean absolute
    difference of the calibrated probabilities. The status is failed-validation when AUC falls
    more than `tolerance` below the parent's (or is undefined).
    """
    y = np.asarray(y)
    q = apply_temperature(p, card.temperature)
    q_parent = apply_temperature(p_parent, card.temperature)
    auc, parent_auc = roc_auc(y, q), roc_auc(y, q_parent)
    op = at_threshold(y, q, card.threshold)
    same = (q >= card.threshold) == (q_parent >= card.threshold)
    delta = auc - parent_auc
    ok = not math.isnan(delta) and delta >= -tolerance
    reason = None
    if not ok:
        reason = ("val AUC undefined" if math.isnan(delta) else
                  f"val AUC {auc:.4f} is {-delta:.4f} below the float parent's "
                  f"{parent_auc:.4f} (tolerance {tolerance:g})")
    return {
        "status": VALIDATED if ok else FAILED_VALIDATION, "reason": reason,
        "split": "val", "n": int(len(y)), "tolerance": float(tolerance),
        "auc": auc, "parent_auc": parent_auc, "delta_auc": delta,
        "threshold": float(card.threshold), "temperature": float(card.temperature),
        "sensitivity": op["sensitivity"], "specificity": op["specificity"],
        "accuracy": op["accuracy"], "confusion": op["confusion"],
        "agreement": float(same.mean()) if len(y) else float("nan"),
        "mean_abs_diff": float(np.mean(np.abs(q - q_parent))) if len(y) else float("nan"),
        "max_abs_diff": float(np.max(np.abs(q - q_parent))) if len(y) else float("nan"),
        # what val chooses for this file (the exporter stores it as the card's own)
        "suggested_thresholds": _suggest(y, q, card.target_sensitivity),
    }


def _suggest(y: np.ndarray, q: np.ndarray, target: float) -> dict[str, float] | None:
    if len(set(np.asarray(y).tolist())) < 2:
        return None
    return {"high_sensitivity": threshold_for_sensitivity(y, q, target),
            "balanced": threshold_balanced(y, q)}
