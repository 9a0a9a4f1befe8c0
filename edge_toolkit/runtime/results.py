"""One record per input file, the same in every output format, and the exit-code rule.

Exit codes of `classify` and `capture`:

    0  every image was classified (files already done in a resumed `--output` count)
    1  some images were classified, some failed (each failure is an `error: PATH: reason`
       line on stderr)
    2  usage or model error: bad options, unreadable or corrupt model, model without a card,
       no interpreter installed, camera missing; nothing was classified
    3  no image succeeded: every file failed, or no images were found
  130  interrupted (Ctrl-C); everything already written to `--output` is kept
  141  stdout was closed by its reader (`classify ... | head`); stopped quietly
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2
EXIT_NONE_SUCCEEDED = 3
EXIT_INTERRUPTED = 130


@dataclass
class Result:
    """What happened to one file.

    `probability` is the calibrated probability of the card's positive label (the number the
    threshold applies to); `raw_probability` is the model's own sigmoid output. `path` is the
    resolved absolute path, the key a resumed run uses to skip files already done.
    """

    file: str
    label: str | None = None
    probability: float | None = None
    threshold: float | None = None
    positive: bool | None = None
    ms: float | None = None
    ms_preprocess: float | None = None
    ms_inference: float | None = None
    raw_probability: float | None = None
    status: str = "ok"
    error: str | None = None
    path: str = ""
    model_id: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with probabilities to 6 places and times to 0.01 ms."""
        d = asdict(self)
        for key in ("probability", "raw_probability", "threshold"):
            if d[key] is not None:
                d[key] = round(float(d[key]), 6)
        for key in ("ms", "ms_preprocess", "ms_inference"):
            if d[key] is not None:
                d[key] = round(float(d[key]), 2)
        return d


FIELDS: list[str] = [f.name for f in fields(Result)]


def error_result(file: str, path: str, reason: str, model_id: str = "") -> Result:
    return Result(file=file, status="error", error=reason, path=path, model_id=model_id)


def rejected_result(file: str, path: str, reason: str, model_id: str = "") -> Result:
    """The input gate refused the picture: no label, `error` says why."""
    return Result(file=file, status="rejected", error=reason, path=path, model_id=model_id)


def exit_code(n_ok: int, n_failed: int) -> int:
    """The batch's exit code from its counts (files skipped as already done count as ok)."""
    if n_ok and not n_failed:
        return EXIT_OK
    if n_ok:
        return EXIT_SOME_FAILED
    return EXIT_NONE_SUCCEEDED
