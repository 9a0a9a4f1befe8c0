"""`edge-toolkit benchmark`: the command over `edge_toolkit.benchmark` (library code, which
raises plain errors); here they become one line each and an exit code."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from edge_toolkit.files import OutputPathError, prepare_output, shown
from edge_toolkit.runtime.interpreter import MAX_THREADS

DEFAULT_OUT = Path("benchmark-out")  # with loose files only: never the model's own folder


def parse_threads(text: str) -> list[int]:
    """'1,2' -> [1, 2] (a count given twice is timed once, as `bench` does), or a click
    usage error naming the option."""
    try:
        out = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        out = []
    if not out or min(out) < 1 or max(out) > MAX_THREADS:
        raise click.BadParameter(f"{text!r}: expected thread counts from 1 to {MAX_THREADS} "
                                 "like 1,2", param_hint="--threads")
    return list(dict.fromkeys(out))


def default_out(sources: tuple[Path, ...]) -> Path:
    """The first run folder given; with loose .tflite files only, ./benchmark-out: a loose
    file's folder may be anything (the installed package's own models/ for the bundled
    model), and a benchmark must not write into it unasked."""
    return next((s for s in sources if s.is_dir()), DEFAULT_OUT)


def prepare_outputs(dest: Path) -> None:
    """Refuse, before any work, an output folder or file that cannot be written (e.g. a
    folder where benchmark.csv should go): OutputPathError with the reason."""
    from edge_toolkit.benchmark import OUTPUTS

    prepare_output(dest, folder=True)
    for name in OUTPUTS:
        prepare_output(dest / name)


@click.command()
@click.argument("sources", nargs=-1, required=True,
                type=click.Path(exists=True, path_type=Path))
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), multiple=True,
              help="Dataset folder, repeatable for a model trained on several sources "
                   "(default: the folders named in each run's card; a loose .tflite names "
                   "none, so it needs --data).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for benchmark.{md,csv,json,png} (default: the first run folder "
                   "given; with loose .tflite files only, ./benchmark-out).")
@click.option("--threads", default="1,2", show_default=True, help="Thread counts to time.")
@click.option("--runs", default=50, show_default=True, type=click.IntRange(1),
              help="Timed invokes per thread count.")
@click.option("--warmup", default=5, show_default=True, type=click.IntRange(0))
@click.option("--bootstrap", default=1000, show_default=True, type=click.IntRange(1),
              help="AUC interval resamples.")
@click.option("--min-auc", type=float, help="Exit 1 if a validated variant's val AUC is lower.")
def benchmark(sources: tuple[Path, ...], data: tuple[Path, ...], out: Path | None, threads: str,
              runs: int, warmup: int, bootstrap: int, min_auc: float | None) -> None:
    """Accuracy vs size vs latency for every variant of the given run folders (after
    `edge-toolkit export`) or .tflite files, in one table (Markdown, CSV, JSON, PNG).

    A loose .tflite whose card holds no validation record is listed as not-validated; a
    run's file that is no longer what its export/report.json says (size, variant, parent
    run, or weights that fail their checksum) as report-mismatch, and is not measured.
    Exit 0; 1 when --min-auc is not met; 2 when a source cannot be read or a file cannot be
    measured (the table is still written, with the others)."""
    from edge_toolkit.benchmark import (
        BenchmarkError,
        below_floor,
        markdown,
        run_benchmark,
        unmeasured,
        write_outputs,
    )

    thread_list = parse_threads(threads)
    dest = out or default_out(sources)

    def say(message: str) -> None:
        click.echo(message, err=True)

    try:
        prepare_outputs(dest)
        result = run_benchmark(list(sources), list(data) or None, thread_list, warmup, runs,
                               bootstrap, log=say)
    except (BenchmarkError, OutputPathError) as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2)
    try:
        written = write_outputs(result, dest, log=say)
    except OSError as exc:
        where = shown(exc.filename) if exc.filename else shown(dest)
        click.echo(f"Error: cannot write {where} ({exc.strerror or exc})", err=True)
        sys.exit(2)
    for p in written:
        click.echo(f"wrote {shown(p)}", err=True)
    click.echo(markdown(result))
    bad = below_floor(result, min_auc) if min_auc is not None else []
    for line in bad:
        click.echo(f"below --min-auc: {line}", err=True)
    failed = unmeasured(result)
    for line in failed:
        click.echo(f"Error: not measured: {line}", err=True)
    if failed:
        sys.exit(2)
    if bad:
        sys.exit(1)
