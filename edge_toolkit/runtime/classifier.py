"""The library API the CLI is a thin layer over: load a carded `.tflite`, classify images.

    clf = Classifier.load("model_int8.tflite", num_threads=2)
    clf.predict_file("xray.jpg")           # -> Result(label=..., probability=..., ms=...)
    for r in classify_paths(clf, ["folder/", "*.png"]):
        ...

The model card inside the file says how to preprocess (the same `edge_toolkit.preprocess`
training used), how to read the output, and where the threshold is, so nothing here can drift
from training. One interpreter per `Classifier`, buffers allocated once: the per-image loop
only decodes, quantizes into a preallocated array and invokes. Not thread-safe; make one
`Classifier` per thread.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from edge_toolkit.card import CardError, ModelCard, split_tflite
from edge_toolkit.files import read_regular
from edge_toolkit.images import ImageLoadError, open_image
from edge_toolkit.metrics import apply_temperature
from edge_toolkit.preprocess import PreprocessConfig, preprocess, quantize
from edge_toolkit.runtime.gate import Gate
from edge_toolkit.runtime.interpreter import (
    BackendMissingError,
    check_threads,
    create_interpreter,
    tensor_io,
)
from edge_toolkit.runtime.results import Result, error_result, rejected_result
from edge_toolkit.runtime.sources import Source, expand_paths, resolve_key


@dataclass(frozen=True)
class Inference:
    """One image through the model: `raw` is its own probability (before temperature);
    `features` the last feature map, dequantized float32 (h, w, C), or None."""

    raw: float
    features: np.ndarray | None = None


class ModelError(Exception):
    """The model file cannot be used: unreadable, not TFLite, corrupt, or inconsistent."""


class MissingCardError(ModelError):
    """The model has no card and no explicit settings were given to stand in for it."""


@dataclass(frozen=True)
class CardlessOptions:
    """What must be said explicitly to run a model that carries no card.

    `size` and `channels` default to the model's input tensor; the value range cannot be
    guessed (a model fed the wrong range gives confident nonsense), so it is required.
    """

    value_range: str
    size: int | None = None
    channels: int | None = None
    fit: str = "pad"
    resize: str = "bilinear"
    intensity: str = "none"


def missing_card_message(model: str | Path) -> str:
    return (f"{model}: no edge_toolkit model card in this file, so its preprocessing and "
            "threshold are unknown. Re-export it with `edge-toolkit export`, or state them: "
            "--value-range and --threshold (and --fit/--resize/--intensity if it was not "
            "trained with letterboxing, bilinear resizing and raw grey levels; "
            "--size/--channels default to the model input)")


class Classifier:
    """A loaded model ready to classify; build it with `Classifier.load`."""

    def __init__(self, interpreter: Any, card: ModelCard, *, backend: str, model_path: str,
                 model_id: str, model_bytes: int, has_card: bool,
                 threshold: float | None = None) -> None:
        self.interpreter = interpreter
        self.card = card
        self.backend = backend
        self.model_path = model_path
        self.model_id = model_id
        self.model_bytes = model_bytes
        self.has_card = has_card
        self.threshold = float(card.threshold if threshold is None else threshold)
        self.temperature = float(card.temperature)
        self.positive_label = card.positive_label
        self.negative_label = card.negative_label
        self.gate: Gate | None = None  # the input gate; `load(gate=True)` sets the card's
        try:
            self.config = PreprocessConfig.from_dict(card.preprocessing)
        except (TypeError, ValueError) as exc:
            raise ModelError(f"{model_path}: the card's preprocessing is invalid ({exc})"
                             ) from None
        if (self.config.size, self.config.channels) != (card.input_size, card.channels):
            raise ModelError(f"{model_path}: the card's preprocessing makes "
                             f"{self.config.shape} but its input is {card.input_size}x"
                             f"{card.input_size}x{card.channels}")
        self._bind_tensors()

    # -- loading ---------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path, *, num_threads: int | None = None,
             threshold: float | str | None = None, cardless: CardlessOptions | None = None,
             interpreter_class: type | None = None, gate: bool = True) -> Classifier:
        """Read a `.tflite`, check it, create its interpreter once.

        `threshold` overrides the card's: a number, or the name of one of the card's stored
        operating points (`card.thresholds`, e.g. "balanced"). `cardless` gives the settings a
        model without a card needs (then `threshold` is required too). `interpreter_class`
        injects another interpreter (benchmarks); by default LiteRT, then tflite-runtime.
        `gate=False` turns the input gate off (`runtime.gate`: rejects what is not a usable
        radiograph, with the limits and out-of-distribution parameters the card carries).
        Raises ModelError (MissingCardError for a card-less model) or BackendMissingError.
        """
        path = Path(path)
        if num_threads is not None:
            check_threads(num_threads)  # ValueError: before LiteRT crashes on 65536
        try:
            data = read_regular(path)
        except IsADirectoryError:
            raise ModelError(f"{path}: is a folder, not a .tflite file") from None
        except OSError as exc:
            raise ModelError(f"{path}: cannot read model ({exc.strerror or exc})") from None
        try:
            bare, card = split_tflite(data)
        except CardError as exc:
            raise ModelError("\n".join(exc.lines(path))) from None
        try:
            interp, backend = create_interpreter(bare, num_threads, interpreter_class)
        except BackendMissingError:
            raise
        except ValueError as exc:
            raise ModelError(f"{path}: not a valid TFLite model, truncated or corrupt ({exc})"
                             ) from None
        has_card = card is not None
        if card is None:
            if cardless is None or threshold is None:
                raise MissingCardError(missing_card_message(path))
            if isinstance(threshold, str):
                raise MissingCardError(f"{path}: has no card, so --threshold must be a number")
            card = _card_for(interp, cardless)
        value = _threshold(card, threshold, path)
        clf = cls(interp, card, backend=backend, model_path=str(path), has_card=has_card,
                  model_id=hashlib.sha256(data).hexdigest()[:12], model_bytes=len(data),
                  threshold=value)
        if gate:
            try:
                clf.gate = Gate.from_card(card.gate, data, card.input_size)
            except (ValueError, KeyError, TypeError, OSError) as exc:
                raise ModelError(f"{path}: the card's input gate is unusable ({exc})") from None
        return clf

    @classmethod
    def from_bytes(cls, model: bytes, card: ModelCard | None = None, *, name: str = "<bytes>",
                   num_threads: int | None = None, delegates: bool = True,
                   interpreter_class: type | None = None) -> Classifier:
        """A Classifier for a flatbuffer's bytes (bare or carded) before any file exists:
        export validation predicts through it with the card it is about to embed. `card`
        stands in for an embedded one. Raises ModelError (MissingCardError without any card),
        BackendMissingError, or ValueError for a thread count out of range."""
        if num_threads is not None:
            check_threads(num_threads)
        data = bytes(model)
        try:
            bare, embedded = split_tflite(data)
        except CardError as exc:
            raise ModelError("\n".join(exc.lines(name))) from None
        card = card or embedded
        if card is None:
            raise MissingCardError(missing_card_message(name))
        try:
            interp, backend = create_interpreter(bare, num_threads, interpreter_class,
                                                 delegates=delegates)
        except BackendMissingError:
            raise
        except ValueError as exc:
            raise ModelError(f"{name}: not a valid TFLite model, truncated or corrupt ({exc})"
                             ) from None
        return cls(interp, card, backend=backend, model_path=name, has_card=embedded is not None,
                   model_id=hashlib.sha256(data).hexdigest()[:12], model_bytes=len(data))

    def tensor_io(self) -> dict[str, dict[str, Any] | None]:
        """The input, probability output and feature-map output (None without one) tensors'
        dtype, shape and quantization, as export records them in the card."""
        inp = self.interpreter.get_input_details()[0]
        by_index = {d["index"]: d for d in self.interpreter.get_output_details()}
        feat = by_index.get(self._feat_index) if self._feat_index is not None else None
        return {"input": tensor_io(inp), "output": tensor_io(by_index[self._out_index]),
                "features": None if feat is None else tensor_io(feat)}

    def _bind_tensors(self) -> None:
        """Check the model against its card and allocate the per-image buffers once.

        One or two outputs: the probability (one element, or two for a softmax card) and
        optionally the last feature map (rank 4), told apart by shape, never by index."""
        inputs = self.interpreter.get_input_details()
        outputs = self.interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) not in (1, 2):
            raise ModelError(f"{self.model_path}: expected one input and one or two output "
                             f"tensors, found {len(inputs)} and {len(outputs)}")
        inp = inputs[0]
        out, feat = _split_outputs(outputs, self.card, self.model_path)
        want = (1, *self.config.shape)
        got = tuple(int(d) for d in inp["shape"])
        if got != want:
            raise ModelError(f"{self.model_path}: the card says input {want[1:]} but the model "
                             f"takes {got}")
        self._in_index = inp["index"]
        self._out_index = out["index"]
        self._in_dtype = np.dtype(inp["dtype"])
        self._in_scale, self._in_zero = _quant(inp)
        self._out_scale, self._out_zero = _quant(out)
        self._out_pos = 0 if int(np.prod(out["shape"])) == 1 else self.card.positive_index
        self._feat_index = None if feat is None else feat["index"]
        self._feat_scale, self._feat_zero = (0.0, 0) if feat is None else _quant(feat)
        self.feature_shape: tuple[int, ...] | None = (
            None if feat is None else tuple(int(d) for d in feat["shape"][1:]))
        hm = self.card.heatmap
        if hm is not None and self.feature_shape is not None:
            if list(hm.get("feature_shape") or []) != list(self.feature_shape) \
                    or len(hm.get("weights") or []) != self.feature_shape[-1]:
                raise ModelError(f"{self.model_path}: the card's heatmap section does not "
                                 f"match the feature output {self.feature_shape}")
        if self._in_dtype.kind in "iu":
            if not self._in_scale:
                raise ModelError(f"{self.model_path}: integer input without quantization "
                                 "parameters")
            self._work = np.empty(self.config.shape, np.float32)
        elif self._in_dtype != np.float32:
            raise ModelError(f"{self.model_path}: unsupported input type {self._in_dtype}")
        self._input = np.zeros(want, self._in_dtype)

    @property
    def has_features(self) -> bool:
        """The model has the feature-map output (models exported before it do not)."""
        return self._feat_index is not None

    @property
    def has_heatmap(self) -> bool:
        """Features and the card's head weights: a class activation map can be drawn."""
        return self.has_features and self.card.heatmap is not None

    # -- inference -------------------------------------------------------------------------

    def infer(self, x: np.ndarray, features: bool = True) -> Inference:
        """One preprocessed (H, W, C) float image -> the model's own probability (before
        temperature) and, when the model has them and `features`, the last feature map as
        float32 (h, w, C). `features=False` skips reading and dequantizing the map."""
        if self._in_dtype == np.float32:
            self._input[0] = x
        else:  # the shared rounding rule, so the device runs what export validated
            self._input[0] = quantize(x, self._in_scale, self._in_zero, self._in_dtype,
                                      work=self._work)
        self.interpreter.set_tensor(self._in_index, self._input)
        self.interpreter.invoke()
        y = float(self.interpreter.get_tensor(self._out_index).reshape(-1)[self._out_pos])
        if self._out_scale:
            y = (y - self._out_zero) * self._out_scale
        fmap = None
        if features and self._feat_index is not None:
            f = self.interpreter.get_tensor(self._feat_index)[0]
            if self._feat_scale:
                fmap = ((f.astype(np.float32) - self._feat_zero)
                        * np.float32(self._feat_scale))
            else:
                fmap = np.array(f, dtype=np.float32)
        return Inference(raw=y, features=fmap)

    def _invoke_raw(self, x: np.ndarray) -> float:
        """One preprocessed (H, W, C) float image -> the model's own probability."""
        return self.infer(x, features=False).raw

    def calibrate(self, raw: float) -> float:
        return float(apply_temperature(np.float64(raw), self.temperature))

    def predict_array(self, x: np.ndarray) -> float | np.ndarray:
        """Calibrated probability for one preprocessed image (H, W, C), or an array of them
        for a batch (N, H, W, C). Inputs must already be in the card's value range."""
        x = np.asarray(x, dtype=np.float32)
        shape = self.config.shape
        if x.shape == shape:
            return self.calibrate(self._invoke_raw(x))
        if x.ndim == 4 and x.shape[1:] == shape:
            return np.array([self.calibrate(self._invoke_raw(xi)) for xi in x])
        raise ValueError(f"expected an array of shape {shape} or (N, *{shape}), got {x.shape}")

    def predict_raw_batch(self, x: np.ndarray) -> np.ndarray:
        """The model's own (uncalibrated) probabilities for preprocessed images (N, H, W, C),
        as float64 (N,): what evaluation compares with the Keras model before temperature."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 4 or x.shape[1:] != self.config.shape:
            raise ValueError(f"expected an array of shape (N, *{self.config.shape}), got "
                             f"{x.shape}")
        return np.array([self._invoke_raw(xi) for xi in x], dtype=np.float64)

    def preprocess(self, source: str | Path | Image.Image) -> np.ndarray:
        """The card's preprocessing; raises ImageLoadError for a bad file."""
        return preprocess(source, self.config)

    def predict_file(self, path: str | Path, *, file: str | None = None) -> Result:
        """Classify one file; raises ImageLoadError (with `.reason`) if it cannot be read."""
        t0 = time.perf_counter()
        img = open_image(path, max_pixels=self.config.max_pixels)
        return self._gated(img, t0, file if file is not None else str(path), resolve_key(path))

    def predict_pil(self, img: Image.Image, *, file: str = "<image>") -> Result:
        """Classify an in-memory PIL image (any mode; reduced to grayscale like files, under
        the card's pixel cap); raises ImageLoadError for one over the cap."""
        t0 = time.perf_counter()
        return self._gated(open_image(img, max_pixels=self.config.max_pixels), t0, file, "")

    def _gated(self, img: Image.Image, t0: float, file: str, key: str) -> Result:
        return self.classify_image(img, t0=t0, file=file, key=key)[0]

    def classify_image(self, img: Image.Image, *, t0: float | None = None,
                       file: str = "<image>", key: str = "", features: bool = False
                       ) -> tuple[Result, Inference | None]:
        """A decoded grayscale picture (`images.open_image`) through the input gate, when on,
        then the model, in one inference: (Result, its Inference; None when the gate refused
        the picture). `features` also reads the feature map (heatmaps); the gate's
        out-of-distribution check reads it anyway. `t0`: when decoding started."""
        t0 = time.perf_counter() if t0 is None else t0
        gate = self.gate
        if gate is not None:
            reason = gate.check_image(img)
            if reason:
                return rejected_result(file, key, reason, self.model_id), None
        x = preprocess(img, self.config)
        ood = gate is not None and gate.ood is not None and self.has_features
        t1 = time.perf_counter()
        inf = self.infer(x, features=features or ood)
        if ood:
            _, reason = gate.check_features(inf.features)
            if reason:
                return rejected_result(file, key, reason, self.model_id), None
        return self.result_from(inf.raw, t0, t1, file, key), inf

    def _result(self, x: np.ndarray, t0: float, file: str, key: str) -> Result:
        t1 = time.perf_counter()
        return self.result_from(self.infer(x, features=False).raw, t0, t1, file, key)

    def result_from(self, raw: float, t0: float, t1: float, file: str, key: str = "") -> Result:
        """The Result for the model's raw probability of one image whose decoding started at
        `t0` and inference at `t1` (perf_counter seconds). A NaN or infinite output is an
        error, never a label: NaN compares below every threshold and would read as "not
        fractured"."""
        if not math.isfinite(raw):
            return error_result(file, key, f"the model's output is not finite ({raw}): the "
                                "model file is damaged or does not suit this input; nothing "
                                "was decided", self.model_id)
        p = self.calibrate(raw)
        t2 = time.perf_counter()
        positive = p >= self.threshold
        return Result(file=file, label=self.positive_label if positive else self.negative_label,
                      probability=p, threshold=self.threshold, positive=positive,
                      ms=(t2 - t0) * 1e3, ms_preprocess=(t1 - t0) * 1e3,
                      ms_inference=(t2 - t1) * 1e3, raw_probability=raw, path=key,
                      model_id=self.model_id)

    def classify_source(self, src: Source) -> Result:
        """A Result for one expanded input, an error Result instead of an exception."""
        if src.problem:
            return error_result(src.file, src.key, src.problem, self.model_id)
        try:
            return self.predict_file(src.file, file=src.file)
        except ImageLoadError as exc:
            return error_result(src.file, src.key, exc.reason, self.model_id)
        except MemoryError:
            return error_result(src.file, src.key, "out of memory decoding this image",
                                self.model_id)
        except Exception as exc:  # one odd file must not end a batch of thousands
            return error_result(src.file, src.key,
                                f"unexpected {type(exc).__name__}: {exc}", self.model_id)

    def describe(self) -> str:
        """One line on what is loaded, for logs and `--verbose`."""
        c = self.card
        return (f"{self.model_path}: {c.family} {c.variant}, input {self.config.shape} "
                f"{self._in_dtype.name}, value range {self.config.value_range}, fit "
                f"{self.config.fit}, intensity {self.config.intensity}, threshold "
                f"{self.threshold:g}, temperature {self.temperature:g}, backend {self.backend}")


def classify_paths(clf: Classifier, paths: Iterable[str | Path],
                   skip: set[str] | None = None) -> Iterator[Result]:
    """Expand files/folders/globs and classify each, yielding ok and error Results in order;
    files whose resolved path is in `skip` are passed over."""
    for src in expand_paths(paths):
        if skip and src.key in skip:
            continue
        yield clf.classify_source(src)


def _split_outputs(outputs: list[dict[str, Any]], card: ModelCard, path: str
                   ) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(probability output, feature-map output or None) by shape: the feature map is the
    rank-4 output; the probability has one element, or two for a softmax card."""
    feats = [d for d in outputs if len(d["shape"]) == 4] if len(outputs) == 2 else []
    probs = [d for d in outputs if not any(d is f for f in feats)]
    if len(probs) != 1 or len(feats) != len(outputs) - 1:
        shapes = ", ".join(str(tuple(int(s) for s in d["shape"])) for d in outputs)
        raise ModelError(f"{path}: outputs {shapes} are not a probability and at most one "
                         "(1, h, w, C) feature map")
    out = probs[0]
    n_out = int(np.prod(out["shape"]))
    if not (n_out == 1 or (n_out == 2 and card.output == "softmax")):
        raise ModelError(f"{path}: output shape {tuple(out['shape'])} does not match a "
                         f"{card.output} output")
    return out, (feats[0] if feats else None)


def _quant(detail: dict[str, Any]) -> tuple[float, int]:
    scale, zero = detail.get("quantization", (0.0, 0))
    return float(scale), int(zero)


def _threshold(card: ModelCard, threshold: float | str | None, path: Path) -> float | None:
    if threshold is None or isinstance(threshold, float | int):
        return threshold
    try:
        return float(threshold)
    except ValueError:
        pass
    if threshold in card.thresholds:
        return float(card.thresholds[threshold])
    names = ", ".join(sorted(card.thresholds)) or "none"
    raise ModelError(f"{path}: no operating point {threshold!r} in the card (it has: {names})")


def _card_for(interp: Any, opts: CardlessOptions) -> ModelCard:
    shape = [int(d) for d in interp.get_input_details()[0]["shape"]]
    if len(shape) != 4 or shape[1] != shape[2]:
        raise ModelError(f"model input {tuple(shape)} is not a square (1, H, W, C) image")
    size = opts.size or shape[1]
    channels = opts.channels or shape[3]
    try:
        cfg = PreprocessConfig(size=size, channels=channels, value_range=opts.value_range,
                               fit=opts.fit, resize=opts.resize, intensity=opts.intensity)
    except ValueError as exc:
        raise ModelError(str(exc)) from None
    return ModelCard(family="unknown (no card)", input_size=size, channels=channels,
                     preprocessing=cfg.to_dict(), variant="no card")
