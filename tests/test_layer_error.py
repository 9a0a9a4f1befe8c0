"""The int8-mixed conversion: the op that loses most to int8 is found and kept in float.

A tiny model with one deliberately int8-hostile layer: a depthwise conv whose kernels have
one large tap and eight small ones, so per-channel int8 weights round the small taps to
zero and the layer's output is off by more than a quantization step, where the other
layers only round.
"""

from __future__ import annotations

import numpy as np
import pytest
from extras import require

require("tensorflow")
require("ai_edge_litert", "device")

from edge_toolkit.preprocess import quantize  # noqa: E402
from edge_toolkit.quantize.inspect import layer_table  # noqa: E402
from edge_toolkit.runtime.interpreter import create_interpreter  # noqa: E402

HOSTILE = "hostile_depthwise"


@pytest.fixture(scope="module")
def model_and_images():
    from edge_toolkit.train.tfsetup import keras, set_seed

    set_seed(0)
    inp = keras.Input((16, 16, 3))
    x = keras.layers.DepthwiseConv2D(3, padding="same", name=HOSTILE)(inp)
    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(x)
    # a linear output: a sigmoid's own 1/256 output step would hide the difference
    out = keras.layers.Dense(1, name="head_logistic")(x)
    model = keras.Model(inp, out, name="tiny")
    kernel = np.full((3, 3, 3, 1), 0.03, np.float32)
    kernel[1, 1] = 10.0  # scale 10/127: the 0.03 taps round to zero in int8
    model.get_layer(HOSTILE).set_weights([kernel, np.zeros(3, np.float32)])
    # the output sums the channels: the lost taps' error adds up rather than averaging out
    model.get_layer("head_logistic").set_weights([np.ones((3, 1), np.float32),
                                                  np.zeros(1, np.float32)])
    rng = np.random.default_rng(0)
    # positive pixels (the lost taps add up instead of cancelling) and a brightness per
    # image (the pooled features, hence the head's output, vary between images)
    images = rng.uniform(0, 1, (60, 16, 16, 3)) * rng.uniform(0.1, 1, (60, 1, 1, 1))
    images = images.astype(np.float32)
    return model, images


def _predict(flat: bytes, x: np.ndarray) -> np.ndarray:
    """Probabilities of a bare flatbuffer, its input quantized as the device does."""
    interp, _ = create_interpreter(flat, num_threads=1)
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    dtype = np.dtype(inp["dtype"])
    probs = []
    for xi in x:
        if dtype != np.float32:
            scale, zero = inp["quantization"]
            xi = quantize(xi, scale, zero, dtype)
        interp.set_tensor(inp["index"], xi[None])
        interp.invoke()
        probs.append(float(interp.get_tensor(out["index"]).reshape(-1)[0]))
    return np.array(probs)


def test_the_worst_layer_is_measured_and_ranked_first(model_and_images):
    from edge_toolkit.quantize.layer_error import ROUNDING_ONLY, int8_debugger, layer_errors

    model, images = model_and_images
    rows = layer_errors(int8_debugger(model, images[:40], images[40:]))
    assert HOSTILE in rows[0]["tensor_name"]
    assert rows[0]["rmse/scale"] > 3 * ROUNDING_ONLY  # 1.49 when written
    # every other op is near plain rounding
    assert all(r["rmse/scale"] < rows[0]["rmse/scale"] / 2 for r in rows[1:])


def test_int8_mixed_keeps_that_layer_float_and_tracks_the_float_model_better(
        model_and_images):
    from edge_toolkit.quantize.layer_error import int8_with_float_layers
    from edge_toolkit.quantize.variants import MIXED_FLOAT_OPS, VARIANTS

    model, images = model_and_images
    rep, held_out = images[:40], images[40:]
    # up to 3 ops may stay float, but only the hostile one is fragile: the others are near
    # plain rounding and stay int8
    flat, kept = int8_with_float_layers(model, rep, rep[:20], MIXED_FLOAT_OPS)
    assert len(kept) == 1 and HOSTILE in kept[0]["tensor"]
    assert kept[0]["op"] == "DEPTHWISE_CONV_2D" and kept[0]["rmse_per_step"] > 1
    weights = {w["name"]: w["dtype"] for w in layer_table(flat)}
    assert [d for n, d in weights.items() if HOSTILE in n] == ["float32"]
    # the other ops' weights stay int8 (their biases int32)
    assert {d for n, d in weights.items() if HOSTILE not in n} <= {"int8", "int32"}
    assert "int8" in weights.values()

    from edge_toolkit.quantize.convert import to_tflite

    plain, _ = to_tflite(model, VARIANTS["int8-ptq"], rep)
    p_float = model.predict(held_out, verbose=0).reshape(-1)
    plain_err = np.abs(_predict(plain, held_out) - p_float).mean()
    mixed_err = np.abs(_predict(flat, held_out) - p_float).mean()
    assert mixed_err < plain_err / 2


def test_bad_arguments_are_refused(model_and_images):
    from edge_toolkit.quantize.layer_error import int8_with_float_layers

    model, images = model_and_images
    with pytest.raises(ValueError, match="at least 1"):
        int8_with_float_layers(model, images, images, 0)
    with pytest.raises(ValueError, match="no images"):
        int8_with_float_layers(model, images, images[:0], 1)
    # the model has 4 quantized ops: keeping them all in float is not an int8 file
    with pytest.raises(ValueError, match="measurable quantized op"):
        int8_with_float_layers(model, images[:40], images[40:], 10, min_error=0.0)


def test_a_further_float_op_must_not_grow_the_file_beyond_the_budget(model_and_images):
    """Every op made 'fragile' (min_error 0): under a budget no file can meet only the
    worst stays float (it always does); with room, two do, and each records the bytes it
    added (tiny ops can even shrink the file: their quantization parameters go)."""
    from edge_toolkit.quantize.layer_error import int8_with_float_layers

    model, images = model_and_images
    rep = images[:40]
    _, one = int8_with_float_layers(model, rep, rep[:20], 2, min_error=0.0, max_growth=-1.0)
    assert len(one) == 1 and HOSTILE in one[0]["tensor"]
    flat, two = int8_with_float_layers(model, rep, rep[:20], 2, min_error=0.0, max_growth=1.0)
    assert len(two) == 2 and two[0]["tensor"] == one[0]["tensor"]
    assert all(isinstance(k["bytes_added"], int) for k in two)
    weights = {w["name"]: w["dtype"] for w in layer_table(flat)}
    assert sum(d == "float32" for d in weights.values()) >= 2  # both ops' weights float


def _rows(*errors: float) -> list[dict]:
    return [{"tensor_name": f"t{i}", "op_name": "CONV_2D", "rmse/scale": e}
            for i, e in enumerate(errors)]


def test_fragile_ops_are_those_well_above_rounding_at_most_max_and_at_least_one():
    from edge_toolkit.quantize.layer_error import FRAGILE_ERROR, fragile_ops

    def names(rows: list[dict]) -> list[str]:
        return [r["tensor_name"] for r in rows]

    # the three real runs' shape: 1.40, 0.76, 0.60 fragile, then ops near rounding
    ranked = _rows(1.40, 0.76, 0.60, 0.55, 0.31, 0.30)
    assert FRAGILE_ERROR == pytest.approx(0.577, abs=1e-3)
    assert names(fragile_ops(ranked, 3)) == ["t0", "t1", "t2"]
    assert names(fragile_ops(ranked, 2)) == ["t0", "t1"]  # the cap
    assert names(fragile_ops(ranked, 5)) == ["t0", "t1", "t2"]  # 0.55 is not fragile
    # no op above the bar: the worst still stays float (the variant's promise)
    assert names(fragile_ops(_rows(0.40, 0.31), 3)) == ["t0"]
    with pytest.raises(ValueError, match="at least 1"):
        fragile_ops(ranked, 0)


def test_the_error_is_measured_on_images_from_the_whole_representative_set():
    """The representative set is ordered as the train split (source by source, class by
    class): the images the layers are measured on must come from all of it."""
    from edge_toolkit.quantize.convert import layer_error_images

    representative = np.arange(300, dtype=np.float32).reshape(300, 1, 1, 1)
    picked = layer_error_images(representative, 32).reshape(-1)
    assert len(set(picked)) == 32
    assert picked.min() < 30 and picked.max() > 270  # not the first 32
    np.testing.assert_array_equal(picked, layer_error_images(representative, 32).reshape(-1))
