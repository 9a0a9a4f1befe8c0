"""The device runtime: TFLite inference with no TensorFlow or Keras (tested).

Everything a Raspberry Pi needs to classify X-rays offline with only the base install
(numpy, pillow, click, ai-edge-litert or tflite-runtime). Nothing under this package may
import TensorFlow or Keras, even indirectly; `tests/test_runtime_tf_free.py` checks it.

    from edge_toolkit.runtime import Classifier, classify_paths
    clf = Classifier.load("model.tflite", num_threads=2)
    clf.predict_file("xray.png").probability

Modules: `interpreter` (backend choice), `classifier` (library API), `sources` (files,
folders, globs), `results` (the record and exit codes), `writers` (table/csv/json/jsonl,
durable output and resume), `progress`, `camera`, `bench` and `report`, `cli`.
"""

from edge_toolkit.runtime.classifier import (
    CardlessOptions,
    Classifier,
    Inference,
    MissingCardError,
    ModelError,
    classify_paths,
)
from edge_toolkit.runtime.interpreter import BackendMissingError
from edge_toolkit.runtime.results import Result

__all__ = [
    "BackendMissingError",
    "CardlessOptions",
    "Classifier",
    "Inference",
    "MissingCardError",
    "ModelError",
    "Result",
    "classify_paths",
]
