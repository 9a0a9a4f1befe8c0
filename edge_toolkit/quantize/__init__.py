"""Optimization and export: pruning, QAT, post-training quantization, TFLite with model cards.

`edge-toolkit export RUN_DIR` (see `cli.py`) or `exporter.export_run(run_dir, ExportConfig())`
writes `RUN_DIR/export/<family>-<variant>.tflite` for each variant in `variants.VARIANTS`,
each with its model card appended as a ZIP archive (`edge_toolkit.card.embed_card`), each
validated on the val split with the TF-free interpreter, plus `report.json` / `report.md`.

Modules without TensorFlow (safe on a device): `variants` (the table), `validate` (judging
a variant's predictions, made by the runtime's `Classifier`, against the float parent),
`inspect` (sparsity in the file's weights, gzip size, I/O types),
`representative` (the calibration images). With TensorFlow: `convert`, `layer_error`,
`finetune`, `qat`, `prune`, `exporter`. Importing this package imports nothing heavy.
"""
