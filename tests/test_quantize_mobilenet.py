"""Pruning and prune-preserving QAT on the real architecture (MobileNetV2: ReLU6,
DepthwiseConv, Add), shrunk to alpha 0.35 at 32 px with random weights so it fits in CI."""

from __future__ import annotations

import pytest
from extras import require

require("tensorflow_model_optimization")
require("ai_edge_litert", "device")

from quantize_fixtures import make_tiny_run  # noqa: E402

from edge_toolkit.card import read_card  # noqa: E402
from edge_toolkit.quantize.variants import EXPORT_FAILED  # noqa: E402


@pytest.mark.slow
def test_mobilenetv2_pqat_keeps_zeros_and_quantizes_depthwise_per_channel(tmp_path):
    from edge_toolkit.card import split_tflite
    from edge_toolkit.quantize.exporter import ExportConfig, export_run
    from edge_toolkit.quantize.inspect import inspect_file
    from edge_toolkit.runtime.interpreter import create_interpreter

    run = make_tiny_run(tmp_path, name="mnv2", epochs=1, family="mobilenetv2",
                        model_overrides={"input_size": 32, "alpha": 0.35},
                        counts={"train": 16, "val": 8, "test": 1})
    cfg = ExportConfig(variants="int8-pqat", qat_epochs=1, prune_epochs=2, tolerance=1.0,
                       bootstrap=0, calibration_images=16)
    report = export_run(run, cfg, log=lambda m: None)
    r = report.result("int8-pqat")
    assert r.status != EXPORT_FAILED, (r.reason, r.traceback)
    path = f"{report.out}/{r.file}"
    info = inspect_file(path)
    assert info["input"]["dtype"] == "uint8" and set(info["weight_dtypes"]) == {"int8"}
    card = read_card(path)
    assert card.variant == "int8-pqat" and "depthwise per channel" in card.export[
        "fine_tune"]["qat"]["scheme"]
    assert card.export["fine_tune"]["qat"]["frozen_batchnorm_layers"] == 52  # as trained
    # depthwise kernels stay dense by default, so the file is a little under the target
    assert 0.40 <= r.sparsity <= 0.52
    bare, _ = split_tflite(open(path, "rb").read())
    interp, _ = create_interpreter(bare, 1, delegates=False)
    depthwise = [op for op in interp._get_ops_details() if op["op_name"] == "DEPTHWISE_CONV_2D"]
    assert len(depthwise) == 17
    for op in depthwise:
        d = interp._get_tensor_details(op["inputs"][1], 0)
        assert len(d["quantization_parameters"]["scales"]) == d["shape"][-1]  # per channel
    # the device runs exactly what export validated: same input rounding, same outputs
    import numpy as np

    from edge_toolkit.card import ModelCard
    from edge_toolkit.data import discover, load_samples
    from edge_toolkit.runtime.classifier import Classifier

    assert card.preprocessing["value_range"] == "-1,1"  # pixels sit on rounding boundaries
    parent = ModelCard.load(run / "card.json")
    val = load_samples(discover(parent.dataset_info.root).split("val"), card.preprocess_config)
    ours = Classifier.from_bytes(bare, card).predict_raw_batch(val.x)
    theirs = Classifier.load(path).predict_raw_batch(val.x)
    np.testing.assert_array_equal(ours, theirs)


def test_quantize_is_one_rounding_rule_for_pixels():
    import numpy as np

    from edge_toolkit.preprocess import PreprocessConfig, normalize, quantize

    pixels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    x = normalize(pixels, PreprocessConfig(size=16, channels=1, value_range="-1,1"))
    q = quantize(x, 2 / 255, 128, np.uint8)
    assert q.dtype == np.uint8 and q.shape == x.shape
    assert np.abs(q[..., 0].astype(int) - pixels.astype(int) - 1).max() <= 1
    work = np.empty(x.shape, np.float32)
    np.testing.assert_array_equal(quantize(x, 2 / 255, 128, np.uint8, work=work), q)
