"""`edge-toolkit classify | capture | bench`: thin click commands over the runtime library.

Imports no TensorFlow or Keras, directly or indirectly (a test enforces it), so these run on a
Raspberry Pi with only the base install.

Exit codes of classify and capture:
  0 all images classified (files already in a resumed --output count as done)
  1 some images failed or were rejected by the input gate, the rest were classified
  2 usage or model error (bad option, unreadable/corrupt model, no card, no interpreter
    installed, no camera); nothing was classified. Also: --output could not be written
    any more (disk full): what was written stays, a rerun resumes
  3 no image succeeded (all failed or were rejected, or none found)
  130 interrupted; results already written to --output are kept
  141 stdout was closed by its reader (`| head`); stopped quietly
  143 stopped by SIGTERM; the same as 130
bench: 0 when every model was measured, 2 when a model could not be (each named on stderr).
"""

from __future__ import annotations

import io
import os
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any, TextIO

import click

from edge_toolkit.files import OutputPathError, prepare_output, shown
from edge_toolkit.preprocess import INTENSITY
from edge_toolkit.runtime.classifier import CardlessOptions, Classifier, ModelError
from edge_toolkit.runtime.interpreter import MAX_THREADS, BackendMissingError, default_threads
from edge_toolkit.runtime.progress import BarSafeStream, Progress, wants_bar
from edge_toolkit.runtime.results import (
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    Result,
    error_result,
    exit_code,
)
from edge_toolkit.runtime.writers import (
    FORMATS,
    Existing,
    OutputError,
    OutputLock,
    Writer,
    format_for,
    open_writer,
    read_existing,
)

EXIT_CODES_HELP = """
\b
Exit codes:
  0  every image was classified (files already in a resumed --output count)
  1  some images failed (one `error: PATH: reason` line each on stderr) or were
     rejected by the input gate (`rejected: PATH: reason`; --no-gate turns it off)
  2  usage or model error: bad option, unreadable/corrupt model, model without a card;
     or --output could not be written (disk full): a rerun resumes
  3  no image succeeded: all failed or were rejected, or none were found
 130 interrupted (Ctrl-C): what was already written to --output is kept
 141 stdout closed by its reader (e.g. `| head`)
 143 stopped by SIGTERM (a service manager, `timeout`): the same, kept
"""


EXIT_PIPE_CLOSED = 141  # 128 + SIGPIPE, what a shell reports for `cat big | head`


EXIT_TERMINATED = 143  # 128 + SIGTERM: a service manager or `timeout` stopped the run


class Terminated(KeyboardInterrupt):
    """SIGTERM, taken the way Ctrl-C is: the batch stops between images and keeps what it
    wrote (a systemd stop or `timeout` used to kill it mid-write, lock file left behind)."""


def _stop_gracefully_on_sigterm(ctx: click.Context) -> None:
    """Until this command ends, SIGTERM raises `Terminated` in the main thread."""
    def terminate(signum: int, frame: Any) -> None:
        raise Terminated

    try:
        previous = signal.signal(signal.SIGTERM, terminate)
    except ValueError:  # not the main thread (an embedding application): leave it be
        return
    ctx.call_on_close(lambda: signal.signal(signal.SIGTERM, previous))


def _interrupt_code(exc: KeyboardInterrupt) -> int:
    return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED


class RuntimeFailure(click.ClickException):
    """A model, output or camera problem: one line on stderr, exit code 2."""

    exit_code = EXIT_USAGE


def _output_options(rerun: str) -> Any:
    def decorate(f: Any) -> Any:
        f = click.option("--overwrite", is_flag=True,
                         help="Start --output afresh instead of adding to it.")(f)
        f = click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
                         help="Write results to FILE as they come, durably (csv/json/jsonl, "
                              f"from --format or the suffix); {rerun}.")(f)
        f = click.option("-f", "--format", "fmt", type=click.Choice(FORMATS),
                         help="Output format [default: table, or the --output suffix].")(f)
        return f

    return decorate


def _model_options(f: Any) -> Any:
    f = click.option("--gate/--no-gate", default=True, show_default=True,
                     help="Input gate: reject what is not a usable radiograph (blank, dark, "
                          "blurred, noise, or unlike the model's training images) with "
                          "status `rejected` and no label.")(f)
    f = click.option("--threshold", metavar="P|NAME",
                     help="Decision threshold: a probability, or the name of an operating point "
                          "stored in the card (e.g. balanced) [default: the card's].")(f)
    f = click.option("-t", "--threads", type=click.IntRange(1, MAX_THREADS),
                     default=default_threads,
                     show_default="all cores, up to 4", help="Interpreter threads.")(f)
    return f


def _cardless_options(f: Any) -> Any:
    for opt in reversed([
        click.option("--value-range", type=click.Choice(["-1,1", "0,1", "0,255"]),
                     help="Card-less models only: input value range (required for them)."),
        click.option("--size", type=click.IntRange(min=8),
                     help="Card-less models only: input size [default: the model's]."),
        click.option("--channels", type=click.Choice(["1", "3"]),
                     help="Card-less models only: input channels [default: the model's]."),
        click.option("--fit", type=click.Choice(["pad", "stretch"]),
                     help="Card-less models only: letterbox or stretch [default: pad]."),
        click.option("--resize", type=click.Choice(["bilinear", "bicubic", "nearest", "area",
                                                    "lanczos"]),
                     help="Card-less models only: resize filter [default: bilinear]."),
        click.option("--intensity", type=click.Choice(INTENSITY),
                     help="Card-less models only: grey-level normalisation [default: none]."),
    ]):
        f = opt(f)
    return f


def _route_image_warnings() -> None:
    """Loader warnings (a JPEG missing its end marker, a multi-frame DICOM): one
    `warning: PATH: ...` line each on stderr, every time, not Python's two-line format."""
    from edge_toolkit.images import ImageWarning

    original = warnings.showwarning

    def show(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if issubclass(category, ImageWarning):
            click.echo(f"warning: {shown(str(message))}", err=True)
        else:
            original(message, category, *args, **kwargs)

    warnings.showwarning = show
    warnings.simplefilter("always", ImageWarning)


def _model_and_paths(args: tuple[str, ...], model_opt: str | None) -> tuple[Path, list[str]]:
    from edge_toolkit.runtime.bundled import NoBundledModelError, split_model_and_paths

    try:
        model, paths = split_model_and_paths(args, model_opt)
    except NoBundledModelError as exc:
        raise RuntimeFailure(str(exc)) from None
    if not paths:
        raise click.UsageError("no image paths given")
    return model, paths


def load_classifier(model: Path, threads: int, threshold: str | None,
                    cardless: dict[str, Any] | None = None, gate: bool = True) -> Classifier:
    """Load for a command: every failure becomes one line and exit code 2."""
    cardless = {k: v for k, v in (cardless or {}).items() if v is not None}
    opts = None
    if "value_range" in cardless:
        opts = CardlessOptions(value_range=cardless["value_range"], size=cardless.get("size"),
                               channels=int(cardless["channels"]) if "channels" in cardless
                               else None, fit=cardless.get("fit", "pad"),
                               resize=cardless.get("resize", "bilinear"),
                               intensity=cardless.get("intensity", "none"))
    value: float | str | None = threshold
    if threshold is not None:
        try:
            value = float(threshold)
        except ValueError:
            value = threshold
        if isinstance(value, float) and not 0.0 <= value <= 1.0:
            raise click.BadParameter("must be between 0 and 1", param_hint="--threshold")
    try:
        clf = Classifier.load(model, num_threads=threads, threshold=value, cardless=opts,
                              gate=gate)
    except (ModelError, BackendMissingError) as exc:
        raise RuntimeFailure(str(exc).replace(str(model), shown(model))) from None
    if clf.has_card and cardless:
        given = ", ".join("--" + k.replace("_", "-") for k in cardless)
        raise RuntimeFailure(f"{model} carries a model card, which fixes its preprocessing; "
                             f"{given} only apply to models without one")
    return clf


class Batch:
    """Counts, writes and reports results; error lines pass above the progress bar."""

    def __init__(self, writer: Writer, progress: Progress) -> None:
        self.writer = writer
        self.progress = progress
        self.ok = 0
        self.failed = 0
        self.rejected = 0  # by the input gate; they count as failed for the exit code

    def add(self, result: Result) -> None:
        if result.ok:
            self.ok += 1
        elif result.status == "rejected":
            self.rejected += 1
            self.progress.echo(f"rejected: {shown(result.file)}: {shown(result.error or '')}",
                               sys.stderr)
        else:
            self.failed += 1
            self.progress.echo(f"error: {shown(result.file)}: {shown(result.error or '')}",
                               sys.stderr)
        self.writer.write(result)
        self.progress.update()


def _open_output(fmt: str | None, output: Path | None, overwrite: bool,
                 model_id: str | None, threshold: float | None = None
                 ) -> tuple[str, Existing]:
    try:
        fmt = format_for(output, fmt)
        if output is None:
            if overwrite:
                raise OutputError("--overwrite only applies with --output")
            return fmt, Existing()
        if fmt == "table":
            raise OutputError("--output needs --format csv, json or jsonl (a table cannot be "
                              "resumed)")
        prepare_output(output)
        if overwrite:
            return fmt, Existing(fresh=True)
        return fmt, read_existing(output, fmt, model_id, threshold)
    except (OutputError, OutputPathError) as exc:
        raise RuntimeFailure(str(exc)) from None
    except OSError as exc:
        raise RuntimeFailure(f"{shown(output or '')}: {exc.strerror or exc}") from None


def _lock_output(ctx: click.Context, output: Path | None) -> None:
    """Hold `--output` for this run: a second writer gets one line and exit 2."""
    if output is None:
        return
    try:
        prepare_output(output)
        ctx.with_resource(OutputLock(output))
    except (OutputError, OutputPathError) as exc:
        raise RuntimeFailure(str(exc)) from None
    except OSError as exc:
        raise RuntimeFailure(f"{shown(output)}: cannot lock ({exc.strerror or exc})") from None


def _make_writer(fmt: str, output: Path | None, existing: Existing, clf: Classifier,
                 files: list[str], progress: Progress) -> tuple[Writer, BarSafeStream | None]:
    stream: TextIO | BarSafeStream = sys.stdout
    safe = None
    if output is None and progress.enabled and _isatty(sys.stdout):
        safe = BarSafeStream(progress, sys.stdout)
        stream = safe
    try:
        writer = open_writer(fmt, output=output, existing=existing, stream=stream,  # type: ignore[arg-type]
                             positive_label=clf.positive_label, files=files)
    except (OutputError, OSError) as exc:
        raise RuntimeFailure(f"{output}: {exc}") from None
    return writer, safe


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _pipe_closed(ctx: click.Context) -> None:
    """The reader went away (`classify ... | head`): stop quietly, as `cat` would."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the flush at exit does not complain
    except (OSError, ValueError, io.UnsupportedOperation):
        pass
    ctx.exit(EXIT_PIPE_CLOSED)


def _write_failed(batch: Batch, output: Path | None, exc: OSError) -> None:
    """Results can no longer be stored: stop now rather than compute what cannot be kept."""
    batch.progress.close()
    try:
        batch.writer.close()  # json: try to write the array from what is in memory
    except OSError:
        pass
    raise RuntimeFailure(f"cannot write {output or 'stdout'} ({exc.strerror or exc}) after "
                         f"{batch.ok + batch.failed} results; free space and rerun to resume")


def _finish(ctx: click.Context, batch: Batch, writer: Writer, safe: BarSafeStream | None,
            *, skipped: int, output: Path | None, quiet: bool, started: float,
            interrupted: int) -> None:
    """Close the writer, print the summary, exit. `interrupted`: 0, or the exit code of the
    signal that stopped the batch (130 Ctrl-C, 143 SIGTERM)."""
    batch.progress.close()
    try:
        writer.close()
        if safe is not None:
            safe.finish()
    except BrokenPipeError:
        _pipe_closed(ctx)
    except OSError as exc:
        raise RuntimeFailure(f"cannot write {output or 'stdout'} ({exc.strerror or exc}); "
                             "rerun to resume") from None
    code = interrupted or exit_code(batch.ok + skipped, batch.failed + batch.rejected)
    if not quiet:
        parts = [f"{batch.ok} classified", f"{batch.failed} failed"]
        if batch.rejected:
            parts.append(f"{batch.rejected} rejected by the input gate")
        if skipped:
            parts.append(f"{skipped} already done in {output}")
        where = f"; results in {output}" if output else ""
        state = ("stopped (SIGTERM)" if interrupted == EXIT_TERMINATED
                 else "interrupted" if interrupted else "done")
        click.echo(f"{state}: {', '.join(parts)} in {time.perf_counter() - started:.1f} s"
                   f"{where} (exit {code})", err=True)
        if batch.rejected:
            click.echo("hint: a rejected picture is not a usable radiograph to this model: "
                       "retake or rescan it (the whole film, evenly lit, in focus); "
                       "--no-gate classifies it anyway, for checking only", err=True)
    ctx.exit(code)


class OverlayWriter:
    """classify --heatmap: classify each source and write its overlay PNG in one inference;
    a file that cannot be written is a warning, never a lost result. Each overlay names its
    image inside the PNG; an image whose plain name (`xray.heatmap.png`) belongs to another
    image, in this run or an earlier one, gets `xray~HASH.heatmap.png` and a note saying so."""

    def __init__(self, clf: Classifier, folder: Path, opacity: float) -> None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RuntimeFailure(f"{folder}: {exc.strerror or exc}") from None
        self.clf, self.folder, self.opacity = clf, folder, opacity
        self.names: dict[str, str] = {}  # overlay name -> source key (no overwriting)

    def _owner(self, name: str) -> str | None:
        """Which image `name` belongs to (`source_text` of its key): this run's, else the one
        the file on disk names."""
        from edge_toolkit.runtime.heatmap import overlay_source

        if name in self.names:
            return self.names[name]
        return overlay_source(self.folder / name)

    def _name(self, file: str, key: str, bar: Progress) -> str:
        from edge_toolkit.runtime.heatmap import overlay_name, source_text

        name = overlay_name(file)
        owner = self._owner(name)
        if owner not in (None, source_text(key)):
            name = overlay_name(file, key)
            bar.echo(f"note: {shown(file)}: heatmap written as {name} ({overlay_name(file)} "
                     f"belongs to {shown(owner)})", sys.stderr)
        self.names[name] = source_text(key)
        return name

    def classify(self, src: Any, bar: Progress) -> Result:
        from edge_toolkit.images import ImageLoadError
        from edge_toolkit.runtime.heatmap import explain_file, overlay, save_overlay

        if src.problem:
            return self.clf.classify_source(src)
        try:
            ex = explain_file(self.clf, src.file, file=src.file)
        except ImageLoadError as exc:
            return error_result(src.file, src.key, exc.reason, self.clf.model_id)
        except MemoryError:
            return error_result(src.file, src.key, "out of memory decoding this image",
                                self.clf.model_id)
        except Exception as exc:  # one odd file must not end the batch
            return error_result(src.file, src.key, f"unexpected {type(exc).__name__}: {exc}",
                                self.clf.model_id)
        if ex.heat is not None:
            path = self.folder / self._name(src.file, src.key, bar)
            try:
                save_overlay(overlay(ex.image, ex.heat, self.opacity), path, src.key)
            except OSError as exc:
                bar.echo(f"warning: {path}: heatmap not written ({exc.strerror or exc})",
                         sys.stderr)
        return ex.result


@click.command(epilog=EXIT_CODES_HELP)
@click.argument("args", nargs=-1, required=True, metavar="[MODEL.tflite] PATH...")
@click.option("-m", "--model", "model_opt", metavar="MODEL",
              help="The .tflite model (or give it as the first argument); default: the "
                   "model bundled with the package.")
@_output_options("a rerun skips files already in it and retries failed ones")
@_model_options
@_cardless_options
@click.option("--heatmap", "heatmap_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Also write a heatmap overlay PNG per image into this folder "
                   "(NAME.heatmap.png; models exported with the feature-map output).")
@click.option("--opacity", type=click.FloatRange(0.0, 1.0), default=0.5, show_default=True,
              help="Heatmap overlay opacity.")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar on stderr [default: when stderr is a terminal].")
@click.option("-q", "--quiet", is_flag=True, help="No summary line on stderr.")
@click.option("-v", "--verbose", is_flag=True, help="Say which model and settings are used.")
@click.pass_context
def classify(ctx: click.Context, args: tuple[str, ...], model_opt: str | None, fmt: str | None,
             output: Path | None, overwrite: bool, gate: bool, threads: int,
             threshold: str | None, value_range: str | None, size: int | None, channels: str | None,
             fit: str | None, resize: str | None, intensity: str | None,
             heatmap_dir: Path | None, opacity: float,
             progress: bool | None, quiet: bool, verbose: bool) -> None:
    """Classify image files, folders (recursively) or globs with MODEL (.tflite).

    With no MODEL, the model bundled with the package is used. Each image is preprocessed
    exactly as the model was trained, from the card inside MODEL.
    Results: a table on the terminal, or --format csv|json|jsonl on stdout, or --output FILE
    (written as they come, durably; a rerun resumes, skipping files already done and retrying
    failed ones). Bad files get one `error: PATH: reason` line on stderr; the batch goes on.
    Pictures that are not usable radiographs get status `rejected`, no label and a
    `rejected: PATH: reason` line (--no-gate classifies them anyway).
    --heatmap DIR writes where the model looked as an overlay PNG per image.
    Decision support for research and education, not a diagnosis.
    """
    started = time.perf_counter()
    _stop_gracefully_on_sigterm(ctx)
    _route_image_warnings()
    model, paths = _model_and_paths(args, model_opt)
    clf = load_classifier(model, threads, threshold, {
        "value_range": value_range, "size": size, "channels": channels, "fit": fit,
        "resize": resize, "intensity": intensity}, gate=gate)
    if verbose:
        click.echo(clf.describe(), err=True)
    _lock_output(ctx, output)
    overlays = None
    if heatmap_dir is not None:
        if not clf.has_heatmap:
            click.echo(f"warning: {model} has no feature-map output (exported before "
                       "heatmaps existed): no heatmaps written", err=True)
        else:
            overlays = OverlayWriter(clf, heatmap_dir, opacity)
    from edge_toolkit.runtime.sources import empty_folders, expand_paths, resolve_key

    sources = expand_paths(paths)
    if sources:  # with nothing at all, the error line below says so
        for folder in empty_folders(paths):
            click.echo(f"warning: {shown(folder)}: no images in this folder", err=True)
    if output is not None and resolve_key(output) in {s.key for s in sources}:
        raise RuntimeFailure(f"{shown(output)}: is also one of the images to classify; "
                             "choose another --output")
    fmt, existing = _open_output(fmt, output, overwrite, clf.model_id, clf.threshold)
    if not sources:  # exit 3 below; csv/json still get an empty document
        click.echo(f"error: no images found in {' '.join(paths)}", err=True)
    done = existing.done
    todo = [s for s in sources if s.key not in done]
    existing = existing.retrying({s.key for s in todo})
    skipped = len(sources) - len(todo)
    show = wants_bar(len(todo)) if progress is None else progress
    bar = Progress(len(todo), enabled=show)
    writer, safe = _make_writer(fmt, output, existing, clf, [s.file for s in todo], bar)
    batch = Batch(writer, bar)
    interrupted = 0
    try:
        for src in todo:
            if overlays is None:
                batch.add(clf.classify_source(src))
            else:
                batch.add(overlays.classify(src, bar))
    except KeyboardInterrupt as exc:
        interrupted = _interrupt_code(exc)
    except BrokenPipeError:
        _pipe_closed(ctx)
    except OSError as exc:  # only writing can raise here: the disk is full or went away
        _write_failed(batch, output, exc)
    _finish(ctx, batch, writer, safe, skipped=skipped, output=output, quiet=quiet,
            started=started, interrupted=interrupted)


@click.command(epilog=EXIT_CODES_HELP)
@click.argument("model", required=False, type=click.Path(path_type=Path))
@click.option("-n", "--count", type=click.IntRange(min=0), default=1, show_default=True,
              help="Pictures to take; 0 = until Ctrl-C.")
@click.option("-i", "--interval", type=click.FloatRange(min=0), default=5.0,
              show_default=True, help="Seconds from one capture to the next.")
@click.option("--save-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("captures"), show_default=True,
              help="Where each capture is saved (timestamped) before it is classified.")
@click.option("--save-format", type=click.Choice(["jpeg", "png"]), default="jpeg",
              show_default=True, help="How captures are kept.")
@click.option("--quality", type=click.IntRange(50, 100), default=90, show_default=True,
              help="JPEG quality of saved captures.")
@click.option("--max-side", type=click.IntRange(min=0), default=2048, show_default=True,
              help="Downscale saved captures to this long side in pixels (0 = full size).")
@click.option("--warmup", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Seconds for the camera's exposure to settle after it starts.")
@click.option("--autofocus/--no-autofocus", default=True, show_default=True,
              help="Run one autofocus cycle before the series (cameras with autofocus).")
@click.option("--lock-exposure/--auto-exposure", default=True, show_default=True,
              help="Lock exposure, gain and white balance for the whole series.")
@_output_options("a rerun appends")
@_model_options
@click.option("--fake-camera", metavar="PATH",
              help="Replay images from PATH instead of a camera (tests, demos); also "
                   "EDGE_TOOLKIT_FAKE_CAMERA; rehearse the workflow before a camera arrives.")
@click.option("-q", "--quiet", is_flag=True, help="No summary line on stderr.")
@click.pass_context
def capture(ctx: click.Context, model: Path | None, count: int, interval: float, save_dir: Path,
            save_format: str, quality: int, max_side: int, warmup: float, autofocus: bool,
            lock_exposure: bool, fmt: str | None, output: Path | None, overwrite: bool,
            gate: bool, threads: int, threshold: str | None, fake_camera: str | None,
            quiet: bool) -> None:
    """Take pictures with the Raspberry Pi camera, save each, then classify it with MODEL
    (default: the model bundled with the package).

    Each capture is saved as SAVE_DIR/capture-YYYYmmdd-HHMMSS-ffffff.jpg (JPEG, long side
    at most --max-side; or --save-format png) before it is classified, so no picture is
    lost; results are printed or written like `classify` (--output appends). Autofocus runs
    once where the camera has it, and exposure is locked for the series. Needs picamera2: on
    Raspberry Pi OS `sudo apt install python3-picamera2` (venv with --system-site-packages),
    or `pip install fracture-edge-toolkit[camera]`.
    """
    from edge_toolkit.runtime.camera import (
        CameraError,
        SaveOptions,
        capture_name,
        open_camera,
        save_capture,
    )
    from edge_toolkit.runtime.sources import Source, resolve_key

    started = time.perf_counter()
    _stop_gracefully_on_sigterm(ctx)
    if model is None:
        from edge_toolkit.runtime.bundled import NoBundledModelError, bundled_model

        try:
            model = bundled_model()
        except NoBundledModelError as exc:
            raise RuntimeFailure(str(exc)) from None
    _route_image_warnings()
    clf = load_classifier(model, threads, threshold, gate=gate)
    _lock_output(ctx, output)
    fmt, existing = _open_output(fmt, output, overwrite, None)
    try:  # before the camera starts: a folder that cannot take the pictures fails every shot
        prepare_output(save_dir, folder=True)
    except OutputPathError as exc:
        raise RuntimeFailure(f"--save-dir: {exc}") from None
    bar = Progress(count, enabled=False)
    try:
        camera = open_camera(fake_camera, warmup=warmup, autofocus=autofocus,
                             lock_exposure=lock_exposure)
    except CameraError as exc:
        raise RuntimeFailure(str(exc)) from None
    if getattr(camera, "focused", None) is False and not quiet:
        click.echo("warning: autofocus did not settle: check the distance to the film and "
                   "the light", err=True)
    opts = SaveOptions(save_format, quality, max_side)
    writer, safe = _make_writer(fmt, output, existing, clf,
                                [str(save_dir / capture_name(suffix=opts.suffix))], bar)
    batch = Batch(writer, bar)
    interrupted = 0
    try:
        taken = 0
        next_at = time.monotonic()
        while count == 0 or taken < count:
            time.sleep(max(0.0, next_at - time.monotonic()))
            next_at = time.monotonic() + interval
            taken += 1
            try:
                img = camera.capture()
            except CameraError as exc:
                batch.add(error_result(f"capture {taken}", "", str(exc), clf.model_id))
                break
            try:
                path = save_capture(img, save_dir, opts)
            except OSError as exc:
                batch.add(error_result(f"capture {taken}", "", f"cannot save to {save_dir} "
                                       f"({exc.strerror or exc})", clf.model_id))
                continue
            batch.add(clf.classify_source(Source(str(path), resolve_key(path))))
    except KeyboardInterrupt as exc:
        interrupted = _interrupt_code(exc)
    except BrokenPipeError:
        _pipe_closed(ctx)
    except OSError as exc:
        _write_failed(batch, output, exc)
    finally:
        camera.close()
    _finish(ctx, batch, writer, safe, skipped=0, output=output, quiet=quiet, started=started,
            interrupted=interrupted)


def _thread_list(values: tuple[str, ...]) -> list[int]:
    out: list[int] = []
    for value in values:
        for part in value.split(","):
            part = part.strip()
            if not part:
                continue
            if not part.isdigit() or not 1 <= int(part) <= MAX_THREADS:
                raise click.BadParameter(f"{part!r} is not an integer from 1 to {MAX_THREADS}",
                                         param_hint="--threads")
            if int(part) not in out:
                out.append(int(part))
    return out or sorted({1, default_threads()})


@click.command()
@click.argument("models", nargs=-1, type=click.Path(path_type=Path))
@click.option("-t", "--threads", multiple=True, metavar="N[,N...]",
              help="Thread counts to measure (repeat or comma-separate) [default: 1 and all "
                   "cores up to 4].")
@click.option("--warmup", type=click.IntRange(min=0), default=5, show_default=True,
              help="Untimed invokes first.")
@click.option("--runs", type=click.IntRange(min=1), default=50, show_default=True,
              help="Timed invokes per model and thread count.")
@click.option("--cold-start", "cold_image", type=click.Path(dir_okay=False, path_type=Path),
              help="Also time `classify MODEL IMAGE` in a new process, spawn to exit.")
@click.option("--cold-runs", type=click.IntRange(min=1), default=3, show_default=True,
              help="Cold-start runs per model (the median is reported).")
@click.option("-f", "--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the report to FILE instead of stdout.")
@click.option("--in-process", is_flag=True,
              help="Run every model in this process (faster; peak memory then accumulates).")
@click.pass_context
def bench(ctx: click.Context, models: tuple[Path, ...], threads: tuple[str, ...], warmup: int,
          runs: int, cold_image: Path | None, cold_runs: int, fmt: str, output: Path | None,
          in_process: bool) -> None:
    """Benchmark interpreter latency and memory of one or more MODELS side by side (the
    bundled model when none is given).

    For each model and thread count: interpreter init time, WARMUP untimed invokes, then RUNS
    timed invokes (mean, p50, p90, p99 ms), model size and the peak RSS of a process that ran
    only that model. Models are timed in alternating rounds (round k of every model before
    round k+1 of any); RATIO is the p50 over the first measured model's p50 at the same
    thread count (JSON `ratio_to` names it): on a noisy machine ratios hold better than
    absolute times. Exit code 0, or 2 if a model could
    not be measured.
    """
    from edge_toolkit.runtime import bench as b

    thread_counts = _thread_list(threads)
    if not models:
        from edge_toolkit.runtime.bundled import NoBundledModelError, bundled_model

        try:
            models = (bundled_model(),)
        except NoBundledModelError as exc:
            raise RuntimeFailure(str(exc)) from None
    if output is not None:
        from edge_toolkit.runtime.sources import resolve_key

        if resolve_key(output) in {resolve_key(m) for m in models}:
            raise RuntimeFailure(f"{shown(output)}: is also one of the models to measure; "
                                 "choose another --output")
        try:
            prepare_output(output)
        except OutputPathError as exc:
            raise RuntimeFailure(str(exc)) from None
    report: dict[str, Any] = {"host": b.host_info(), "warmup": warmup, "runs": runs,
                              "models": [], "cold_start": []}
    if cold_image is not None:  # before minutes of timing, not after
        try:
            b.check_image(cold_image)
        except OSError as exc:
            raise RuntimeFailure(f"{shown(cold_image)}: {exc.strerror or exc}") from None
    errors: list[Path] = []

    def fail(model: Path, exc: Exception) -> None:
        errors.append(model)
        click.echo(f"error: {shown(model)}: {getattr(exc, 'strerror', None) or exc}", err=True)

    report["models"] = b.bench_models(models, thread_counts, warmup, runs,
                                      in_process=in_process, on_error=fail)
    failed = bool(errors)
    if cold_image is not None:
        for res in report["models"]:
            try:
                report["cold_start"].append(b.cold_start(res["model"], cold_image, cold_runs))
            except (OSError, ValueError) as exc:
                failed = True
                click.echo(f"error: cold start: {exc}", err=True)
    from edge_toolkit.runtime.report import bench_json, bench_table

    text = bench_json(report) if fmt == "json" else bench_table(report)
    if output is not None:
        from edge_toolkit.runtime.writers import atomic_write

        try:
            atomic_write(output, text)
        except OSError as exc:
            raise RuntimeFailure(f"cannot write {shown(output)} ({exc.strerror or exc})"
                                 ) from None
    else:
        click.echo(text, nl=False)
    ctx.exit(EXIT_USAGE if failed else 0)
