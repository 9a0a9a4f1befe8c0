"""`edge-toolkit audit DATA`: the dataset audit as a command, with pipeline-friendly exit codes.

Exit codes: 0 done; 2 usage errors and folders that are not a dataset (click's convention);
3 with `--fail-on-leak` when any val/test image has an exact or near copy in train; 130
interrupted (Ctrl-C): nothing written, no partial report.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from edge_toolkit.audit.hashing import NEAR_THRESHOLD
from edge_toolkit.files import OutputPathError, prepare_output, shown
from edge_toolkit.runtime.writers import atomic_write

if TYPE_CHECKING:
    from edge_toolkit.audit.report import AuditReport
    from edge_toolkit.audit.resplit import ResplitResult

EXIT_LEAK = 3
EXIT_INTERRUPTED = 130  # Ctrl-C, as train and pipeline


class AuditFailure(click.ClickException):
    """The folder cannot be audited or an output cannot be written: one line, exit 2."""

    exit_code = 2


@click.command("audit")
@click.argument("data", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True,
              help="Print the full report as JSON on stdout instead of text.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the JSON report to this file.")
@click.option("--fail-on-leak", is_flag=True,
              help=f"Exit with status {EXIT_LEAK} when any val/test image has a copy in train.")
@click.option("--resplit", "resplit_out", type=click.Path(path_type=Path),
              help="Write a leak-free split (same layout) to this new folder.")
@click.option("--fractions", default=None, metavar="SHARES",
              help="Split shares for --resplit: '70,15,15' (train,val,test) or "
                   "'train=0.8,test=0.2'. Default: the source's shares by file count.")
@click.option("--seed", default=0, show_default=True, help="Seed of the --resplit assignment.")
@click.option("--near/--no-near", default=True, show_default=True,
              help="Look for near duplicates (rotated, flipped, resized, re-encoded copies).")
@click.option("--threshold", default=NEAR_THRESHOLD, show_default=True,
              type=click.FloatRange(0.5, 1.0),
              help="Near-duplicate correlation threshold (1.0 = identical pixels).")
@click.option("--shortcuts/--no-shortcuts", default=True, show_default=True,
              help="Fit global-feature baselines (size, format, intensity) on train.")
@click.option("--bootstrap", default=1000, show_default=True, type=click.IntRange(0),
              help="Bootstrap resamples for the shortcut AUC intervals (0: none).")
@click.option("--max-groups", default=8, show_default=True, type=click.IntRange(0),
              help="Groups listed per section in the text report (JSON lists all).")
@click.option("--workers", default=None, type=click.IntRange(1),
              help="Reader threads (default: one per CPU).")
def audit(data: Path, as_json: bool, report_path: Path | None, fail_on_leak: bool,
          resplit_out: Path | None, fractions: str | None, seed: int, near: bool,
          threshold: float, shortcuts: bool, bootstrap: int, max_groups: int,
          workers: int | None) -> None:
    """Audit DATA ({train,val,test}/<class>/<images>, any subset of splits) for duplicates,
    split leakage, label conflicts and shortcut features, before anyone trusts a score.

    \b
    Examples:
      edge-toolkit audit DATA
      edge-toolkit audit DATA --json --fail-on-leak > audit.json
      edge-toolkit audit DATA --resplit DATA-clean --fractions 70,15,15
    """
    try:
        code = _run(data, as_json, report_path, fail_on_leak, resplit_out, fractions, seed,
                    near, threshold, shortcuts, bootstrap, max_groups, workers)
    except KeyboardInterrupt:
        click.echo("interrupted: the audit did not finish; no report or re-split was written",
                   err=True)
        sys.exit(EXIT_INTERRUPTED)
    if code:
        sys.exit(code)


def _run(data: Path, as_json: bool, report_path: Path | None, fail_on_leak: bool,
         resplit_out: Path | None, fractions: str | None, seed: int, near: bool,
         threshold: float, shortcuts: bool, bootstrap: int, max_groups: int,
         workers: int | None) -> int:
    """The command's work; returns its exit code (Ctrl-C is the caller's)."""
    from edge_toolkit.audit.report import format_text, json_safe, run_audit
    from edge_toolkit.audit.scan import AuditError
    from edge_toolkit.files import printable

    shares = _check_outputs(data, report_path, resplit_out, fractions)
    progress = _progress if sys.stderr.isatty() and not as_json else None
    try:
        report = run_audit(data, near=near, threshold=threshold, shortcuts=shortcuts,
                           bootstrap=bootstrap, workers=workers, progress=progress)
    except AuditError as exc:
        raise AuditFailure(str(exc)) from None
    finally:
        if progress is not None:
            click.echo("\r" + " " * 40 + "\r", nl=False, err=True)
    for rec in report.scan.records:
        if rec.warning:
            click.echo(f"warning: {shown(rec.path)}: {shown(rec.warning)}", err=True)

    doc = report.data
    result = None
    if resplit_out is not None:
        result = _resplit(report, data, resplit_out, shares, seed, near, threshold)
        doc["resplit"] = json_safe(result.to_dict())
    if report_path is not None:
        try:
            atomic_write(report_path, json.dumps(doc, indent=2) + "\n")
        except OSError as exc:
            raise AuditFailure(f"--report: cannot write {shown(report_path)} "
                               f"({exc.strerror or exc})") from None
    if as_json:
        click.echo(json.dumps(doc, indent=2))
    else:
        click.echo(format_text(report, max_groups=max_groups))
        if result is not None and resplit_out is not None:
            click.echo("")
            click.echo(printable("\n".join(result.lines())))
            click.echo(f"  check it: edge-toolkit audit {shown(resplit_out)}")
    return EXIT_LEAK if fail_on_leak and report.leak.leaked else 0


def _check_outputs(data: Path, report_path: Path | None, resplit_out: Path | None,
                   fractions: str | None) -> dict[str, float] | None:
    """Refuse bad outputs and --fractions before any work; the parsed shares (None: the
    source's own)."""
    from edge_toolkit.audit import resplit as rs

    if report_path is not None and resplit_out is not None:
        rep, out = report_path.resolve(), resplit_out.resolve()
        if rep == out or out in rep.parents:
            raise AuditFailure(f"--report {shown(report_path)}: is the --resplit folder or "
                               "inside it; write the report elsewhere")
    if report_path is not None:  # a missing or read-only folder fails now, not after the work
        try:
            prepare_output(report_path)
        except OutputPathError as exc:
            raise AuditFailure(f"--report: {exc}") from None
    if resplit_out is None:
        if fractions:
            raise click.UsageError("--fractions only applies with --resplit")
        return None
    try:
        shares = rs.parse_fractions(fractions) if fractions else None
        rs.check_output(data, resplit_out)
    except (rs.ResplitError, ValueError) as exc:
        raise AuditFailure(str(exc)) from None
    return shares


def _resplit(report: AuditReport, data: Path, out: Path, shares: dict[str, float] | None,
             seed: int, near: bool, threshold: float) -> ResplitResult:
    """Write the re-split; a split it leaves empty is a warning on stderr."""
    from edge_toolkit.audit import resplit as rs

    if shares is None:
        shares = rs.source_fractions(report.scan)
    if "train" not in shares:
        raise click.UsageError(f"{shown(data)}: no train/ split; give --fractions for --resplit")
    try:
        result = rs.write(report.scan, out, shares, seed=seed, near=near, threshold=threshold)
    except rs.ResplitError as exc:
        raise AuditFailure(str(exc)) from None
    except OSError as exc:
        raise AuditFailure(f"--resplit: cannot write {shown(out)} "
                           f"({exc.strerror or exc})") from None
    for line in result.warnings():
        click.echo(f"warning: --resplit: {line}", err=True)
    return result


def _progress(done: int, total: int) -> None:
    if done == total or done % 200 == 0:
        click.echo(f"\rreading {done}/{total} files", nl=False, err=True)
