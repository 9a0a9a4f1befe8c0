"""The input gate: refuse what is not a usable radiograph before a fracture label is given.

A classifier gives every input a probability, so a blank frame, a noise frame or a photo of a
person all came back "fractured". Two checks stand in front of it:

* what the file says it is: a DICOM file whose Modality is not a plain radiograph (CT, MR,
  a nuclear-medicine scan, ultrasound, ...) is refused by name;
* quality, on the decoded grayscale picture (no model needed): too small, near-uniform, too
  dark, too bright, heavily blurred, pure noise;
* out of distribution, two distances fitted at export, each with a threshold that rejects at
  most 1% of the real val radiographs (so together at most 2%):
  - appearance: gray-level and gradient histograms of the picture (`appearance`), the
    distance to those of the training radiographs;
  - the model's own pooled features: the Mahalanobis distance in a PCA subspace of the
    training features plus the residual outside it, fitted on the exported variant itself.
  Measured (benchmarks/README.md), the two together catch far more than either alone.

Limits live in the card's `gate` section; cards without one get `DEFAULT_LIMITS`. The PCA
arrays travel in the model file's card archive (`OOD_MEMBER`, `APPEARANCE_MEMBER`). Numpy
only: runs on the device.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
from PIL import Image

from edge_toolkit.card import read_member

OOD_MEMBER = "edge_toolkit_gate.npz"
APPEARANCE_MEMBER = "edge_toolkit_gate_appearance.npz"
ANALYSIS_SIZE = 256  # quality is judged on the picture scaled to this long side
# DICOM Modality values of plain (projection) radiographs, plus "other" and none given
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX", "RG", "DR", "OT", ""})
MODALITY_NAMES = {"CT": "CT", "MR": "MRI", "NM": "nuclear medicine", "PT": "PET",
                  "US": "ultrasound", "MG": "mammography", "XA": "angiography",
                  "RF": "fluoroscopy", "IO": "intra-oral dental X-ray",
                  "PX": "panoramic dental X-ray", "ES": "endoscopy", "XC": "photograph",
                  "OP": "ophthalmic photograph", "SM": "microscopy", "ECG": "ECG"}


def modality_reason(modality: str | None) -> str | None:
    """Why a DICOM picture's Modality rules it out, or None (not DICOM, or a radiograph)."""
    if modality is None or modality in RADIOGRAPH_MODALITIES:
        return None
    name = MODALITY_NAMES.get(modality)
    what = f"{modality} ({name})" if name else modality
    return f"DICOM modality {what} is not a plain radiograph (the model reads CR/DX X-rays)"


@dataclass(frozen=True)
class QualityLimits:
    """Quality thresholds (8-bit gray levels; sharpness is |Laplacian| std over image std at
    ANALYSIS_SIZE). Defaults reject none of the 4,600 real training radiographs measured
    (fracture-xray + FracAtlas train: smallest side 79 px, std >= 16.7, 99th percentile
    >= 70, 1st percentile <= 143, sharpness 0.04 to 1.03)."""

    # None: half the model's input side, from 16 px up to at most MAX_DEFAULT_MIN_SIDE
    min_side: int | None = None
    uniform_std: float = 8.0
    dark_p99: float = 40.0
    bright_p1: float = 200.0
    blur_min: float = 0.03
    noise_max: float = 2.0

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> QualityLimits:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (data or {}).items() if k in known and v is not None})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


DEFAULT_LIMITS = QualityLimits()
# the cap on the default smallest side: the training radiographs go down to 79 px, and a model
# at 224 or 256 px learns from them scaled up, so "half the input side" would refuse images
# like those it was trained and validated on (40 of fracture-xray's 3,515 at 256 px)
MAX_DEFAULT_MIN_SIDE = 64


@dataclass(frozen=True)
class Quality:
    """What the quality check measured on one picture."""

    min_side: int
    std: float
    p1: float
    p99: float
    sharpness: float


def measure(img: Image.Image) -> Quality:
    """Measure an 8-bit grayscale picture (as `edge_toolkit.images.open_image` returns)."""
    w, h = img.size
    a = _analysis(img)
    std = float(a.std())
    sharp = 0.0
    if a.shape[0] > 2 and a.shape[1] > 2:
        lap = (4 * a[1:-1, 1:-1] - a[:-2, 1:-1] - a[2:, 1:-1] - a[1:-1, :-2] - a[1:-1, 2:])
        sharp = float(lap.std() / (std + 1e-6))
    p1, p99 = np.percentile(a, [1, 99])
    return Quality(min(w, h), std, float(p1), float(p99), sharp)


def _analysis(img: Image.Image) -> np.ndarray:
    w, h = img.size
    scale = ANALYSIS_SIZE / max(w, h)
    small = img if scale >= 1 else img.resize(
        (max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR)
    return np.asarray(small, dtype=np.float32)


_GRADIENT_BINS = [0, 0.5, 1.5, 3, 6, 12, 24, 48, 96, 256]


def appearance(img: Image.Image) -> np.ndarray:
    """27 numbers on how a picture looks: square roots of its 16-bin gray-level histogram and
    9-bin gradient-magnitude histogram, mean and std. Radiographs share a look (dark field,
    soft gradients) that documents, screenshots, photos and synthetic frames do not."""
    a = _analysis(img)
    hist = np.histogram(a, bins=16, range=(0, 256))[0] / a.size
    grads = np.concatenate([np.abs(np.diff(a, axis=1)).ravel(),
                            np.abs(np.diff(a, axis=0)).ravel()])
    ghist = (np.histogram(grads, bins=_GRADIENT_BINS)[0] / max(1, grads.size)
             if grads.size else np.zeros(len(_GRADIENT_BINS) - 1))
    return np.concatenate([np.sqrt(hist), np.sqrt(ghist), [a.mean() / 255, a.std() / 255]])


def quality_reason(q: Quality, limits: QualityLimits = DEFAULT_LIMITS, input_size: int = 96
                   ) -> str | None:
    """Why a picture is not usable, or None. Order: the most basic problem first."""
    min_side = limits.min_side or max(16, min(MAX_DEFAULT_MIN_SIDE, input_size // 2))
    if q.min_side < min_side:
        return f"too small ({q.min_side} px side < {min_side})"
    if q.std < limits.uniform_std:
        return f"near-uniform frame (contrast {q.std:.1f} < {limits.uniform_std:g})"
    if q.p99 < limits.dark_p99:
        return f"too dark (brightest 1% at {q.p99:.0f}/255 < {limits.dark_p99:g})"
    if q.p1 > limits.bright_p1:
        return f"too bright (darkest 1% at {q.p1:.0f}/255 > {limits.bright_p1:g})"
    if q.sharpness < limits.blur_min:
        return f"heavily blurred (sharpness {q.sharpness:.3f} < {limits.blur_min:g})"
    if q.sharpness > limits.noise_max:
        return f"noise, not an image (sharpness {q.sharpness:.2f} > {limits.noise_max:g})"
    return None


@dataclass(frozen=True)
class OodModel:
    """PCA of pooled training features; score = sqrt(Mahalanobis^2 in the subspace + residual^2
    / residual variance), i.e. a probabilistic-PCA distance."""

    mean: np.ndarray  # (C,)
    components: np.ndarray  # (k, C), orthonormal rows
    variances: np.ndarray  # (k,)
    residual_var: float
    threshold: float = float("inf")

    def score(self, pooled: np.ndarray) -> np.ndarray | float:
        """Distance of pooled features (C,) or (N, C) from the training features."""
        x = np.asarray(pooled, dtype=np.float64)
        one = x.ndim == 1
        d = np.atleast_2d(x) - self.mean
        z = d @ self.components.T
        inside = np.sum(z * z / self.variances, axis=1)
        resid = np.sum(d * d, axis=1) - np.sum(z * z, axis=1)
        dims = len(self.variances)
        if self.residual_var > 0:
            inside = inside + np.maximum(resid, 0.0) / self.residual_var
            dims = x.shape[-1]
        out = np.sqrt(inside / dims)  # about 1 for features like the training ones
        return float(out[0]) if one else out

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez_compressed(buf, mean=self.mean.astype(np.float32),
                            components=self.components.astype(np.float32),
                            variances=self.variances.astype(np.float64),
                            residual_var=np.float64(self.residual_var))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, threshold: float) -> OodModel:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return cls(z["mean"].astype(np.float64), z["components"].astype(np.float64),
                       z["variances"].astype(np.float64), float(z["residual_var"]),
                       float(threshold))


def fit_ood(train: np.ndarray, val: np.ndarray, *, components: int = 32,
            max_val_reject: float = 0.02, residual: bool = True) -> OodModel:
    """Fit on training features (N, C); threshold = the smallest value that rejects at most
    `max_val_reject` of the val features (M, C). Rejection is `score > threshold`."""
    train = np.asarray(train, dtype=np.float64)
    if train.ndim != 2 or len(train) < 3:
        raise ValueError(f"need at least 3 training feature vectors, got {train.shape}")
    mean = train.mean(axis=0)
    centred = train - mean
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    var = s ** 2 / (len(train) - 1)
    k = int(min(components, len(var) - 1 if len(var) > 1 else 1))
    floor = max(float(var[0]) * 1e-6, 1e-12)
    variances = np.maximum(var[:k], floor)
    dims = train.shape[1] - k
    residual_var = float(max(var[k:].sum() / dims, floor)) if residual and dims > 0 else 0.0
    # the threshold is set with the arrays as `to_bytes` stores them (float32), so a val
    # image on the threshold is not rejected by the rounding of the stored model
    mean, comps = _as_stored(mean), _as_stored(vt[:k])
    model = OodModel(mean, comps, variances, residual_var)
    scores = np.sort(np.atleast_1d(model.score(np.asarray(val, dtype=np.float64))))
    allowed = int(np.floor(max_val_reject * len(scores)))  # how many may lie above
    threshold = float(scores[len(scores) - 1 - allowed]) if len(scores) else float("inf")
    # one image scored alone (device) and in a batch (here) differ in the last bits
    threshold *= 1.0 + 1e-9
    return OodModel(mean, comps, variances, residual_var, threshold)


def _as_stored(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float32).astype(np.float64)


def pool_features(features: np.ndarray) -> np.ndarray:
    """A feature map (h, w, C) -> its spatial mean (C,), float64: what the OOD score reads,
    computed one way at export (fit) and on the device (check)."""
    f = np.asarray(features, dtype=np.float64)
    return f.mean(axis=(0, 1)) if f.ndim == 3 else f.reshape(-1)


class Gate:
    """Quality limits plus, when the model carries one, the out-of-distribution check."""

    def __init__(self, limits: QualityLimits = DEFAULT_LIMITS, ood: OodModel | None = None,
                 input_size: int = 96, look: OodModel | None = None) -> None:
        self.limits = limits
        self.ood = ood
        self.input_size = input_size
        self.look = look  # the appearance distance, when the card carries one

    @classmethod
    def from_card(cls, gate: dict[str, Any] | None, archive: bytes | None = None,
                  input_size: int = 96) -> Gate:
        """From a card's `gate` section and the model file's bytes (for the PCA arrays).
        Raises ValueError when the section names arrays the file does not hold."""
        gate = gate or {}
        limits = QualityLimits.from_dict(gate.get("quality"))
        ood, look = (_member_model(gate.get(key), archive, default)
                     for key, default in (("ood", OOD_MEMBER),
                                          ("appearance", APPEARANCE_MEMBER)))
        return cls(limits, ood, input_size, look)

    def check_image(self, img: Image.Image) -> str | None:
        """The reason to reject a decoded grayscale picture, or None."""
        reason = modality_reason(img.info.get("dicom_modality"))
        if reason is not None:
            return reason
        reason = quality_reason(measure(img), self.limits, self.input_size)
        if reason is None and self.look is not None:
            score = float(self.look.score(appearance(img)))
            if score > self.look.threshold:
                reason = (f"does not look like a radiograph (appearance distance {score:.2f} > "
                          f"{self.look.threshold:.2f})")
        return reason

    def check_features(self, features: np.ndarray | None) -> tuple[float | None, str | None]:
        """(score, reason or None) for the model's last feature map (h, w, C) or pooled (C,)."""
        if self.ood is None or features is None:
            return None, None
        score = float(self.ood.score(pool_features(features)))
        if score > self.ood.threshold:
            return score, (f"not like the radiographs this model was trained on "
                           f"(distance {score:.2f} > {self.ood.threshold:.2f})")
        return score, None


def _member_model(spec: dict[str, Any] | None, archive: bytes | None, default: str
                  ) -> OodModel | None:
    if not spec:
        return None
    name = spec.get("member", default)
    data = read_member(archive, name) if archive else None
    if data is None:
        raise ValueError(f"the card's gate names {name}, which the model file lacks")
    return OodModel.from_bytes(data, float(spec["threshold"]))
