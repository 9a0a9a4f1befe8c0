"""Skip a test module only when an optional extra is not installed at all.

`pytest.importorskip("tensorflow")` also skips when TensorFlow is installed but broken (a bad
wheel, a missing shared library, a numpy clash): then the whole training and export suite
would be silently skipped and CI would pass. Here a distribution that is installed must
import, or the module fails to collect.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from types import ModuleType

import pytest

# module -> the distribution that provides it (as pip names it)
DISTRIBUTIONS = {"tensorflow": "tensorflow", "tf_keras": "tf-keras",
                 "tensorflow_model_optimization": "tensorflow-model-optimization",
                 "ai_edge_litert": "ai-edge-litert"}


def installed(module: str) -> bool:
    try:
        version(DISTRIBUTIONS.get(module, module))
    except PackageNotFoundError:
        return False
    return True


def require(module: str, extra: str = "train") -> ModuleType:
    """Import `module`; skip if its distribution is not installed; let an import failure of
    an installed one propagate (the test fails, it is not skipped)."""
    if not installed(module):
        pytest.skip(f"{module} is not installed (pip install 'fracture-edge-toolkit[{extra}]')",
                    allow_module_level=True)
    return importlib.import_module(module)
