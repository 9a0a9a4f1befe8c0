"""QAT, pruning and prune-preserving QAT on the real architecture (MobileNetV2: ReLU6,
DepthwiseConv, Add), shrunk to alpha 0.35 at 32 px with random weights so it fits in CI."""

from __future__ import annotations

import pytest

pytest.importorskip("tensorflow_model_optimization")
pytest.importorskip("ai_edge_litert")

from edge_toolkit.card import read_card  # noqa: E402
from edge_toolkit.quantize.variants import EXPORT_FAILED  # noqa: E402
from tests.quantize_fixtures import make_tiny_run  # noqa: E402


@pytest.mark.slow
def test_mobilenetv2_qat_pruned_and_pqat_export(tmp_path):
    from edge_toolkit.quantize.exporter import ExportConfig, export_run
    from edge_toolkit.quantize.inspect import inspect_file

    run = make_tiny_run(tmp_path, name="mnv2", epochs=1, family="mobilenetv2",
                        model_overrides={"input_size": 32, "alpha": 0.35},
                        counts={"train": 16, "val": 8, "test": 1})
    cfg = ExportConfig(variants="int8-qat,pruned,int8-pqat", qat_epochs=1, prune_epochs=2,
                       tolerance=1.0, bootstrap=0, calibration_images=16)
    report = export_run(run, cfg, log=lambda m: None)
    for r in report.results:
        assert r.status != EXPORT_FAILED, (r.variant, r.reason, r.traceback)
        info = inspect_file(f"{report.out}/{r.file}")
        assert info["input"]["dtype"] == "uint8" and set(info["weight_dtypes"]) == {"int8"}
        assert read_card(f"{report.out}/{r.file}").variant == r.variant
    # depthwise kernels stay dense by default, so the file is a little under the target
    for name in ("pruned", "int8-pqat"):
        assert 0.40 <= report.result(name).sparsity <= 0.52, name
    assert report.result("int8-qat").sparsity < 0.2
