"""Content hashes and a rotation- and flip-tolerant image signature for near-duplicate search.

Why polar: the Kaggle fracture data holds copies rotated by arbitrary angles (up to about 90
degrees), re-encoded, resized and flipped. A DCT hash only tolerates a few degrees. Sampling the
disc inscribed in a square thumbnail on a polar grid turns a rotation about the centre into a
circular shift along the angle axis and a mirror flip into a reversal, so:

- the magnitudes of each ring's Fourier series are invariant to rotation and flips: a cheap
  descriptor whose cosine similarity finds candidate pairs with one matrix product per block;
- the best circular cross-correlation of two polar images (one inverse FFT per pair, both
  mirror senses) is a precise similarity in [-1, 1] that verifies each candidate.

Rotated copies without `expand` keep the inscribed disc whole, which is why it, not the
corners, is compared. The thumbnail is the whole image squashed to a square (datasets are
usually resized to one square size, the Kaggle copies included); non-square images also get a
signature of their central square (`central_thumbnail`), for copies rotated in place.

Threshold (NEAR_THRESHOLD): over all pairs of both shared datasets, verified correlations fall
in two clusters with nothing between 0.970 and 0.981: above, rotated/resized copies of one
radiograph; below (up to 0.956 across splits), different radiographs, the closest being the
left and right wrists of one patient. 0.975 sits in the gap. Numpy only.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np
from PIL import Image

from edge_toolkit.audit.groups import DisjointSet

THUMB = 64  # side of the square thumbnail the polar grid samples
RINGS = 16  # radii from 1 px to THUMB/2 - 1 px
ANGLES = 128  # samples per ring (2.8 degrees apart)
HARMONICS = 33  # angular Fourier terms kept per ring (low-pass; 0..32)
DESCRIPTOR_HARMONICS = 12  # terms whose magnitudes form the candidate descriptor
NEAR_THRESHOLD = 0.975  # verified correlation at or above which two images are near duplicates
# float32 rounding: identical pixels correlate at 0.9999994, not 1.0, so a match is a
# correlation within this of the threshold (`--threshold 1.0` must find identical pixels)
MATCH_TOLERANCE = 1e-5
CANDIDATE_COSINE = 0.98  # descriptor cosine below which a pair is not even verified
FLAT_RMS = 0.5  # grey levels: a disc that varies less than this is blank, not a signature
_BATCH = 256  # candidate pairs per verification batch; small, so new unions skip more


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@lru_cache(maxsize=1)
def _polar_sampling() -> tuple[np.ndarray, ...]:
    """Bilinear gather indices and weights of the polar grid on a THUMB x THUMB image."""
    c = (THUMB - 1) / 2.0
    r = np.linspace(1.0, THUMB / 2.0 - 1.0, RINGS)
    th = 2.0 * np.pi * np.arange(ANGLES) / ANGLES
    y = c + r[:, None] * np.sin(th)[None, :]
    x = c + r[:, None] * np.cos(th)[None, :]
    y0, x0 = np.floor(y).astype(np.intp), np.floor(x).astype(np.intp)
    fy, fx = y - y0, x - x0
    y1, x1 = np.minimum(y0 + 1, THUMB - 1), np.minimum(x0 + 1, THUMB - 1)
    idx = np.stack([y0 * THUMB + x0, y1 * THUMB + x0, y0 * THUMB + x1, y1 * THUMB + x1])
    w = np.stack([(1 - fy) * (1 - fx), fy * (1 - fx), (1 - fy) * fx, fy * fx])
    # sqrt(r) weights make the dot product of two polar images an area integral over the disc
    ring_w = np.sqrt(r)[:, None]
    return idx, w.astype(np.float32), ring_w.astype(np.float32)


def thumbnail(img: Image.Image) -> np.ndarray:
    """The whole image resized (squashed) to THUMB x THUMB, as uint8.

    Squashed, not cropped: datasets are usually made by resizing every image to one square
    size, and the Kaggle rotated copies were made from such squashed originals.
    """
    method = Image.Resampling.BOX if min(img.size) >= THUMB else Image.Resampling.BILINEAR
    return np.asarray(img.resize((THUMB, THUMB), method), dtype=np.uint8)


def central_thumbnail(img: Image.Image) -> np.ndarray:
    """The central square of the image resized to THUMB x THUMB, as uint8.

    For non-square images rotated in place (size kept), where squashing would turn the
    rotation into a shear: their inscribed disc survives the rotation whole.
    """
    w, h = img.size
    side = min(w, h)
    box = ((w - side) / 2.0, (h - side) / 2.0, (w + side) / 2.0, (h + side) / 2.0)
    method = Image.Resampling.BOX if side >= THUMB else Image.Resampling.BILINEAR
    return np.asarray(img.resize((THUMB, THUMB), method, box=box), dtype=np.uint8)


def signature(img: Image.Image) -> np.ndarray:
    """Signature of one grayscale image; see `signatures`."""
    return signatures(thumbnail(img)[None])[0]


def signatures(thumbs: np.ndarray, chunk: int = 512) -> np.ndarray:
    """Low-pass angular spectra (n x RINGS x HARMONICS, complex64) of THUMB x THUMB thumbnails.

    Each is scaled so that the best correlation of an image with itself is 1; a flat image
    gets an all-zero signature and is never a near duplicate of anything. Batched: per-image
    numpy calls would cost more in overhead than in arithmetic.
    """
    idx, w, ring_w = _polar_sampling()
    wsq = ring_w * ring_w
    out = np.zeros((len(thumbs), RINGS, HARMONICS), np.complex64)
    for s in range(0, len(thumbs), chunk):
        flat = thumbs[s:s + chunk].reshape(-1, THUMB * THUMB).astype(np.float32)
        polar = (flat[:, idx] * w).sum(axis=1)  # (m, RINGS, ANGLES)
        mean = (polar * wsq).sum(axis=(1, 2)) / (wsq.sum() * ANGLES)
        polar -= mean[:, None, None]
        varied = np.sqrt((polar * polar).mean(axis=(1, 2))) >= FLAT_RMS
        polar *= ring_w
        spec = np.fft.rfft(polar, axis=-1)[:, :, :HARMONICS]
        # energy of the kept band (interior harmonics count twice in a real signal's spectrum)
        power = np.abs(spec) ** 2
        energy = power[:, :, 0].sum(axis=1) + 2.0 * power[:, :, 1:].sum(axis=(1, 2))
        ok = varied & (energy > 0)
        scale = np.sqrt(ANGLES / np.where(ok, energy, 1.0)) * ok
        out[s:s + chunk] = spec * scale[:, None, None]
    return out


def descriptors(signatures: np.ndarray) -> np.ndarray:
    """Rotation- and flip-invariant unit vectors (n x RINGS*DESCRIPTOR_HARMONICS), float32."""
    d = np.abs(signatures[:, :, :DESCRIPTOR_HARMONICS]).reshape(
        len(signatures), RINGS * DESCRIPTOR_HARMONICS)  # explicit: 0 images is no error
    norm = np.linalg.norm(d, axis=1, keepdims=True)
    return (d / np.where(norm > 0, norm, 1.0)).astype(np.float32)


def best_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Best normalized correlation over all rotations and both mirror senses, per pair.

    `a`, `b`: (n, RINGS, HARMONICS) signatures; returns (n,) floats in [-1, 1].
    """
    direct = np.fft.irfft((a * np.conj(b)).sum(axis=1), n=ANGLES, axis=-1).max(axis=-1)
    mirror = np.fft.irfft((a * b).sum(axis=1), n=ANGLES, axis=-1).max(axis=-1)
    return np.maximum(direct, mirror)


def matches(corr: np.ndarray, threshold: float) -> np.ndarray:
    """Which correlations reach `threshold`, allowing for float32 rounding."""
    return np.asarray(corr) >= threshold - MATCH_TOLERANCE


def near_duplicate_pairs(sigs: np.ndarray, threshold: float = NEAR_THRESHOLD,
                         dsu: DisjointSet | None = None, involve: np.ndarray | None = None,
                         block: int = 512) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i, j, correlation), i < j, whose verified correlation reaches `threshold`.

    Candidates come from the descriptor cosine (blockwise matrix products: 10,000 images cost
    about 10^10 multiply-adds in BLAS, not 10^8 Python comparisons). With `dsu`, hits are
    joined as they are found and pairs already connected are not verified, which keeps a
    family of k copies from costing k^2 verifications; the components come out the same,
    but then not every matching pair is returned. With `involve` (a bool mask), only pairs
    with at least one such member are considered.
    """
    n = len(sigs)
    desc = descriptors(sigs)
    nonflat = np.linalg.norm(desc, axis=1) > 0
    out_i: list[np.ndarray] = []
    out_j: list[np.ndarray] = []
    out_c: list[np.ndarray] = []
    for start in range(0, n, block):
        stop = min(start + block, n)
        cos = desc[start:stop] @ desc[start:].T  # only j >= start: the upper triangle
        ii, jj = np.nonzero(cos >= CANDIDATE_COSINE)
        ii, jj = ii + start, jj + start
        keep = (jj > ii) & nonflat[ii] & nonflat[jj]
        if involve is not None:
            keep &= involve[ii] | involve[jj]
        ii, jj = ii[keep], jj[keep]
        for s in range(0, len(ii), _BATCH):
            ci, cj = ii[s:s + _BATCH], jj[s:s + _BATCH]
            if dsu is not None:
                roots = dsu.roots()
                fresh = roots[ci] != roots[cj]
                ci, cj = ci[fresh], cj[fresh]
            corr = best_correlation(sigs[ci], sigs[cj])
            hit = matches(corr, threshold)
            out_i.append(ci[hit])
            out_j.append(cj[hit])
            out_c.append(corr[hit].astype(np.float32))
            if dsu is not None:
                dsu.union_pairs(ci[hit], cj[hit])
    if not out_i:
        empty = np.zeros(0, np.intp)
        return empty, empty, np.zeros(0, np.float32)
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_c)
