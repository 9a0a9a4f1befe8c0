"""Choosing and creating the TFLite interpreter, without ever touching TensorFlow.

LiteRT (`ai-edge-litert`) comes first; `tflite-runtime` is the fallback for systems where
LiteRT has no wheel (32-bit Raspberry Pi OS). TensorFlow's own `tf.lite.Interpreter` is never
a fallback: importing TensorFlow on a Pi costs seconds and hundreds of MB, and the whole point
of the runtime is that it is not there. Callers that want it (a comparison benchmark) pass
the class in explicitly.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import numpy as np

INSTALL_HINT = (
    "no TFLite interpreter found: `pip install ai-edge-litert` "
    "(or `pip install tflite-runtime` on systems without a LiteRT wheel, e.g. 32-bit Raspberry "
    "Pi OS)"
)
MAX_THREADS = 64  # LiteRT crashes (segfault) on absurd counts such as 65536
# Lines the native runtime prints on every start; they are not news to anyone.
_NOISE = ("INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",)


class BackendMissingError(RuntimeError):
    """Neither ai-edge-litert nor tflite-runtime can be imported."""


def interpreter_class() -> tuple[type, str]:
    """The interpreter class and the name of the package that provides it."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai-edge-litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter  # type: ignore[import-not-found]

        return Interpreter, "tflite-runtime"
    except ImportError:
        raise BackendMissingError(INSTALL_HINT) from None


def default_threads() -> int:
    """All cores up to 4: more rarely helps a small CNN and starves the rest of the box."""
    try:
        cores = len(os.sched_getaffinity(0))  # honours taskset and container CPU sets
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


def check_threads(num_threads: int) -> int:
    """An interpreter thread count from 1 to MAX_THREADS, or ValueError saying so."""
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) \
            or not 1 <= num_threads <= MAX_THREADS:
        raise ValueError(f"thread count must be an integer from 1 to {MAX_THREADS}, not "
                         f"{num_threads!r}")
    return num_threads


def create_interpreter(model: bytes, num_threads: int | None = None,
                       cls: type | None = None, *, delegates: bool = True) -> tuple[Any, str]:
    """Build and allocate an interpreter for flatbuffer bytes; returns (interpreter, backend).

    Raises ValueError for bytes that are not a loadable model (the message says why).
    `num_threads=None` means `default_threads()`: LiteRT itself would silently use one.
    `delegates=False` skips XNNPACK so every op and constant stays visible (weight
    inspection); only the LiteRT and tflite-runtime interpreters take it.
    """
    if cls is None:
        cls, backend = interpreter_class()
    else:
        backend = f"{cls.__module__}.{cls.__qualname__}"
    threads = default_threads() if num_threads is None else check_threads(num_threads)
    kwargs: dict[str, Any] = {"model_content": model, "num_threads": threads}
    if not delegates:
        kwargs["experimental_op_resolver_type"] = _no_delegates(cls)
    with _HeldStderr() as held:
        try:
            interp = cls(**kwargs)
            interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            detail = " ".join(held.lines(drop_all=True))
            raise ValueError(f"{exc}{' (' + detail + ')' if detail else ''}".strip()) from None
    return interp, backend


def _no_delegates(cls: type) -> Any:
    """The op resolver without default delegates, from the interpreter's own package."""
    import importlib

    module = importlib.import_module(cls.__module__)
    resolver = getattr(module, "OpResolverType", None)
    if resolver is None:
        raise ValueError(f"{cls.__module__}.{cls.__qualname__} cannot run without delegates")
    return resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES


def tensor_io(detail: dict[str, Any]) -> dict[str, Any]:
    """One tensor's dtype, shape and quantization, as recorded in cards and reports."""
    scale, zero = detail.get("quantization", (0.0, 0))
    return {"dtype": np.dtype(detail["dtype"]).name,
            "shape": [int(d) for d in detail["shape"]],
            "scale": float(scale), "zero_point": int(zero)}


class _HeldStderr:
    """Hold back what native code writes to fd 2 meanwhile; re-emit all but known noise.

    `lines(drop_all=True)` hands the held lines to an error message instead, so the reason the
    runtime printed is quoted once, in the one-line error.
    """

    def __init__(self) -> None:
        self._saved: int | None = None
        self._tmp: Any = None
        self._lines: list[str] | None = None
        self._drop = False

    def __enter__(self) -> _HeldStderr:
        try:
            self._saved = os.dup(2)
        except OSError:  # no fd 2 (some embedded launchers): nothing to hold back
            return self
        self._tmp = tempfile.TemporaryFile(mode="w+b")
        os.dup2(self._tmp.fileno(), 2)
        return self

    def lines(self, drop_all: bool = False) -> list[str]:
        self._drop = self._drop or drop_all
        if self._lines is None:
            self._lines = []
            if self._tmp is not None:
                self._tmp.flush()
                self._tmp.seek(0)
                text = self._tmp.read().decode(errors="replace")
                self._lines = [ln for ln in text.splitlines() if ln.strip() and ln not in _NOISE]
        return self._lines

    def __exit__(self, *exc: object) -> None:
        if self._saved is None:
            return
        os.dup2(self._saved, 2)
        os.close(self._saved)
        lines = self.lines()
        self._tmp.close()
        if not self._drop:
            for line in lines:
                os.write(2, (line + "\n").encode())
