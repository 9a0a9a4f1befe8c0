"""Tiny carded `.tflite` models for tests, built with TensorFlow in a few seconds.

`make_tflite` builds one model in this process (it imports TensorFlow). Test modules that must
stay TensorFlow-free (the runtime's) call `build_models`, which builds several in one child
process, or `cached_models`, which also reuses them across test modules through pytest's
session temp dir. Weights are seeded, so a given spec always gives the same model.

Run as a script to build by hand: `python tests/tiny_models.py OUT.tflite --size 32 --int8`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from edge_toolkit.card import ModelCard, embed_card
from edge_toolkit.preprocess import PreprocessConfig

# Before TensorFlow is imported (only inside the functions that need it): tf_keras models.
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# The specs the runtime's tests share (built once per session by `cached_models`). "float" and
# "bare" have the same weights, as do "float3" and "int8_3".
RUNTIME_MODELS: dict[str, dict[str, Any]] = {
    "float": {},
    "uint8": {"int8": True},
    "float3": {"channels": 3},
    "int8_3": {"int8": True, "input_type": "int8", "channels": 3},
    "bare": {"with_card": False},
    "calibrated": {"card_overrides": {"temperature": 2.0, "threshold": 0.9}},
}


def tiny_card(*, size: int = 32, channels: int = 1, variant: str = "float32",
              value_range: str = "-1,1", card_overrides: dict[str, Any] | None = None
              ) -> ModelCard:
    """The card a tiny model carries; `card_overrides` replaces top-level fields."""
    cfg = PreprocessConfig(size=size, channels=channels, value_range=value_range)
    fields: dict[str, Any] = {
        "family": "tiny-test", "input_size": size, "channels": channels,
        "preprocessing": cfg.to_dict(), "variant": variant, "threshold": 0.5,
        "thresholds": {"balanced": 0.5, "sensitivity": 0.3},
        "notes": "Untrained test model built by tests/tiny_models.py.",
    }
    fields.update(card_overrides or {})
    return ModelCard(**fields)


def _keras_model(size: int, channels: int, seed: int, arch: str = "tiny",
                 features: str | None = None) -> Any:
    """`features`: None (one output), "last" or "first": the feature map (the input of
    `head_pool`) as a second output after or before the probability, as export adds it."""
    import tf_keras as keras

    keras.utils.set_random_seed(seed)
    if arch == "mobilenetv2":  # untrained, full size: for latency and memory only
        base = keras.applications.MobileNetV2(input_shape=(size, size, channels),
                                              include_top=False, weights=None, pooling="avg")
        out = keras.layers.Dense(1, activation="sigmoid")(base.output)
        return keras.Model(base.input, out)
    if arch == "gap":
        return _gap_detector(size, channels, features)
    if arch != "tiny":
        raise ValueError(f"arch must be 'tiny', 'gap' or 'mobilenetv2', not {arch!r}")
    inp = keras.Input((size, size, channels))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(inp)
    fmap = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(fmap)
    # Large weights spread the output over (0, 1), so different images give different answers.
    out = keras.layers.Dense(1, activation="sigmoid", name="head_logistic",
                             kernel_initializer=keras.initializers.RandomNormal(0.0, 20.0))(x)
    if features == "last":
        return keras.Model(inp, [out, fmap])
    if features == "first":
        return keras.Model(inp, [fmap, out])
    return keras.Model(inp, out)


def _gap_detector(size: int, channels: int, features: str | None) -> Any:
    """A hand-set (untrained) model that localizes: channel 0 of its feature map responds to
    a dark vertical band between bright columns (the gap of a fracture across a horizontal
    bone: bright, dark, bright along a row), channel 1 to plain brightness. The head weighs
    the gap channel up and brightness down, so its class activation map peaks on the gap."""
    import numpy as np
    import tf_keras as keras

    inp = keras.Input((size, size, channels))
    conv = keras.layers.Conv2D(2, (5, 12), padding="same", activation="relu", name="detect")
    x = conv(inp)
    fmap = keras.layers.AveragePooling2D(2, name="pool2")(x)
    pooled = keras.layers.GlobalAveragePooling2D(name="head_pool")(fmap)
    head = keras.layers.Dense(1, activation="sigmoid", name="head_logistic")
    out = head(pooled)
    kernel = np.zeros((5, 12, channels, 2), np.float32)
    profile = np.array([1] * 4 + [-2] * 4 + [1] * 4, np.float32) / (5 * channels)
    kernel[:, :, :, 0] = profile[None, :, None]
    kernel[2, 5:7, :, 1] = 0.5 / channels
    conv.set_weights([kernel, np.zeros(2, np.float32)])
    # set so a horizontal phantom with a fracture scores about 0.75, one without about 0.25
    head.set_weights([np.array([[150.0], [-1.0]], np.float32), np.array([-3.4], np.float32)])
    outputs = {None: out, "last": [out, fmap], "first": [fmap, out]}[features]
    return keras.Model(inp, outputs)


def heatmap_card_section(model: Any) -> dict[str, Any]:
    """The card's heatmap section for a tiny model with a feature output."""
    kernel, bias = model.get_layer("head_logistic").get_weights()
    shape = [int(d) for d in model.get_layer("head_pool").input.shape[1:]]
    return {"weights": [float(w) for w in kernel[:, 0]], "bias": float(bias[0]),
            "feature_shape": shape}


def make_tflite(path: str | Path, *, size: int = 32, channels: int = 1, int8: bool = False,
                input_type: str = "uint8", card_overrides: dict[str, Any] | None = None,
                with_card: bool = True, seed: int = 0, value_range: str = "-1,1",
                arch: str = "tiny", features: str | None = None) -> Path:
    """Build, convert and write an untrained sigmoid classifier; returns `path`.

    `int8=True` gives a full-integer model whose input and output tensors are `input_type`
    (uint8 or int8), calibrated on random textured inputs in the card's value range.
    `arch="mobilenetv2"` gives a full-size (untrained) MobileNetV2 for latency benchmarks.
    `features` ("last" or "first") adds the feature-map output and the card's heatmap section.
    """
    import numpy as np
    import tensorflow as tf

    model = _keras_model(size, channels, seed, arch, features)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    lo, hi = {"-1,1": (-1.0, 1.0), "0,1": (0.0, 1.0), "0,255": (0.0, 255.0)}[value_range]
    if int8:
        rng = np.random.default_rng(seed)

        def representative():
            if arch == "gap":  # what it will see: phantoms, fractured or not
                from edge_toolkit.synthetic import phantom

                for i in range(32):
                    img = phantom(rng, bool(i % 2), size) / 255.0 * (hi - lo) + lo
                    yield [np.repeat(img[None, :, :, None], channels, -1).astype(np.float32)]
                return
            # Images of every brightness with some texture, like what tests feed: pure noise
            # would calibrate too narrow a range for flat dark or bright pictures.
            for _ in range(64):
                level = rng.uniform(0.0, 1.0)
                noise = rng.normal(0.0, rng.uniform(0.0, 0.3), (1, size, size, 1))
                x = np.clip(level + noise, 0.0, 1.0) * (hi - lo) + lo
                yield [np.repeat(x, channels, axis=-1).astype(np.float32)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        dtype = {"uint8": tf.uint8, "int8": tf.int8}[input_type]
        converter.inference_input_type = dtype
        converter.inference_output_type = dtype
    flat = converter.convert()
    if with_card:
        overrides: dict[str, Any] = {"family": f"{arch}-untrained"} if arch != "tiny" else {}
        if features:
            overrides["heatmap"] = heatmap_card_section(model)
        card = tiny_card(size=size, channels=channels, value_range=value_range,
                         variant="int8-ptq" if int8 else "float32",
                         card_overrides={**overrides, **(card_overrides or {})})
        flat = embed_card(flat, card)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(flat)
    os.replace(tmp, path)  # a reader never sees half a model
    return path


def build_models(specs: dict[str, dict[str, Any]], out_dir: str | Path) -> dict[str, Path]:
    """Build `{name: make_tflite kwargs}` as `out_dir/NAME.tflite` in one child process, so
    this process never loads TensorFlow. Files that already exist are kept."""
    out_dir = Path(out_dir)
    paths = {name: out_dir / f"{name}.tflite" for name in specs}
    _build_in_child({paths[name]: kw for name, kw in specs.items()})
    return paths


def cached_models(tmp_path_factory: Any, specs: dict[str, dict[str, Any]]) -> dict[str, Path]:
    """`build_models` into the pytest session's temp dir, keyed by spec, so every test
    module that asks for the same spec shares one file and TensorFlow loads at most once."""
    base = models_dir(tmp_path_factory)
    paths = {name: base / f"{_spec_key(kw)}.tflite" for name, kw in specs.items()}
    _build_in_child({paths[name]: kw for name, kw in specs.items()})
    return paths


def models_dir(tmp_path_factory: Any) -> Path:
    """Where `cached_models` keeps its files: $EDGE_TOOLKIT_TEST_MODELS when set (models
    built beforehand, e.g. for the arm64 check, where TensorFlow cannot be installed), else
    the pytest session's temp dir."""
    env = os.environ.get("EDGE_TOOLKIT_TEST_MODELS")
    return Path(env) if env else tmp_path_factory.getbasetemp() / "tiny_models"


def prebuild(out_dir: str | Path, specs: dict[str, dict[str, Any]] | None = None) -> None:
    """Build the shared runtime models into `out_dir` as `cached_models` names them."""
    specs = RUNTIME_MODELS if specs is None else specs
    _build_in_child({Path(out_dir) / f"{_spec_key(kw)}.tflite": kw for kw in specs.values()})


def _build_in_child(jobs: dict[Path, dict[str, Any]]) -> None:
    todo = {str(path): kw for path, kw in jobs.items() if not path.exists()}
    if todo:
        subprocess.run([sys.executable, __file__, "--batch", json.dumps(todo)], check=True,
                       env={**os.environ, "PYTHONPATH": _pythonpath()})


def make_images(folder: str | Path, n: int = 6, *, size: int = 48, seed: int = 0,
                formats: tuple[str, ...] = ("png", "jpg")) -> list[Path]:
    """`n` small grayscale pictures of different brightness (so a tiny model's answers
    differ), alternating formats; returns their paths. Smooth structure plus mild noise, so
    they pass the input gate's quality checks like a real picture (pure noise would not)."""
    import numpy as np
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        level = 255.0 * i / max(n - 1, 1)
        shape = (size, size + 8 * (i % 3))
        yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
        pattern = 60 * np.sin(xx / 6.0 + i) * np.cos(yy / 8.0)
        pixels = np.clip(40 + 0.7 * level + pattern + rng.normal(0, 4, shape), 0, 255)
        path = folder / f"img{i:03d}.{formats[i % len(formats)]}"
        Image.fromarray(pixels.astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def make_bad_files(folder: str | Path) -> dict[str, Path]:
    """One file of each kind a batch must survive, keyed by kind: truncated JPEG, zero
    bytes, text named .png, a PNG header claiming 100000x100000 pixels (a pixel bomb), and a
    broken symbolic link. Unreadable permissions are left to the test (root reads anything)."""
    import io
    import struct
    import zlib

    import numpy as np
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(
        buf, format="JPEG")
    data = buf.getvalue()
    out = {
        "truncated": folder / "truncated.jpg",
        "empty": folder / "empty.png",
        "text": folder / "notes.png",
        "bomb": folder / "bomb.png",
        "broken_link": folder / "broken_link.png",
    }
    out["truncated"].write_bytes(data[: len(data) // 2])
    out["empty"].write_bytes(b"")
    out["text"].write_text("this is not a picture\n")

    def png_chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))

    out["bomb"].write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0))
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 1024)) + png_chunk(b"IEND", b""))
    if out["broken_link"].is_symlink():
        out["broken_link"].unlink()
    os.symlink("does-not-exist.png", out["broken_link"])
    return out


def _spec_key(kw: dict[str, Any]) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(kw, sort_keys=True).encode()).hexdigest()[:16]


def _pythonpath() -> str:
    root = str(Path(__file__).resolve().parent.parent)
    extra = os.environ.get("PYTHONPATH")
    return root + (os.pathsep + extra if extra else "")


def _main(argv: list[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", nargs="?")
    parser.add_argument("--batch", help="JSON {path: make_tflite kwargs}")
    parser.add_argument("--prebuild", metavar="DIR",
                        help="Build the runtime tests' shared models into DIR (then run the "
                             "tests with EDGE_TOOLKIT_TEST_MODELS=DIR).")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--int8", action="store_true")
    parser.add_argument("--input-type", default="uint8")
    parser.add_argument("--no-card", action="store_true")
    parser.add_argument("--arch", default="tiny", choices=["tiny", "gap", "mobilenetv2"])
    parser.add_argument("--features", choices=["last", "first"],
                        help="add the feature-map output (and the card's heatmap section)")
    parser.add_argument("--value-range", default="-1,1", choices=["-1,1", "0,1", "0,255"])
    args = parser.parse_args(argv)
    if args.prebuild:
        prebuild(args.prebuild)
        return
    if args.batch:
        for path, kw in json.loads(args.batch).items():
            make_tflite(path, **kw)
        return
    if not args.out:
        parser.error("give OUT or --batch")
    make_tflite(args.out, size=args.size, channels=args.channels, int8=args.int8,
                input_type=args.input_type, with_card=not args.no_card, arch=args.arch,
                features=args.features, value_range=args.value_range)


if __name__ == "__main__":
    _main(sys.argv[1:])
