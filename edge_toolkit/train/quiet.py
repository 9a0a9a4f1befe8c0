"""Keep TensorFlow's own chatter out of the toolkit's output (imports no TensorFlow).

TensorFlow's C++ runtime and the TFLite converter write INFO/WARNING/ERROR lines straight to
file descriptor 2 (`failed call to cuInit` on a machine without a GPU, converter notes), and
tf_keras logs through absl. None of it is an error of the run, yet a newcomer reads it as one.
`quiet_tensorflow()` must run before TensorFlow is first imported; `stderr_to()` sends what
still comes through to a file in the run folder, so it is kept, not lost.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def quiet_tensorflow() -> None:
    """Set TensorFlow's log levels before its first import (no effect once imported)."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    try:
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)
    except ImportError:
        pass


@contextmanager
def stderr_to(path: Path) -> Iterator[Path]:
    """Redirect file descriptor 2 (C++ logs and Python's stderr alike) to `path` meanwhile."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab") as f:
        os.dup2(f.fileno(), 2)
        try:
            yield path
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
