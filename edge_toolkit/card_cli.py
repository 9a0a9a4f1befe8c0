"""`edge-toolkit card MODEL`: show what a model file says about itself.

Exit codes: 0 the card was printed; 2 the file cannot be read, is not a model, has no card,
or its card is invalid (one `error: MODEL: problem` line per problem on stderr), as
`classify` refuses such a file.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from edge_toolkit.card import CardError, ModelCard, load_card
from edge_toolkit.card_sections import is_finite_number
from edge_toolkit.files import shown

EXIT_BAD_CARD = 2


class CardFailure(click.ClickException):
    """One or more lines on stderr naming the file, exit code 2."""

    exit_code = EXIT_BAD_CARD

    def show(self, file: object = None) -> None:
        click.echo(self.message, err=True)


def require_card(model: Path) -> ModelCard:
    """The card of a .tflite file, or a CardFailure with one line per problem."""
    try:
        return load_card(model)
    except CardError as exc:
        raise CardFailure("\n".join(f"error: {line}" for line in exc.lines(shown(model)))
                          ) from None
    except OSError as exc:
        raise CardFailure(f"error: {shown(model)}: cannot read ({exc.strerror or exc})"
                          ) from None


@click.command()
@click.argument("model", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True,
              help="The whole card as JSON (its heatmap weights, gate and export details "
                   "included: about 2,000 lines).")
def card(model: Path | None, as_json: bool) -> None:
    """Summarise the model card embedded in MODEL (.tflite; the bundled model when none is
    given): what it is, how to feed it, its operating point and what it scored; --json for
    the whole card. Exit 2 if it has none or it is invalid."""
    if model is None:
        from edge_toolkit.runtime.bundled import NoBundledModelError, bundled_model

        try:
            model = bundled_model()
        except NoBundledModelError as exc:
            raise CardFailure(f"error: {exc}") from None
    found = require_card(model)
    click.echo(found.to_json() if as_json else card_summary(found, model))


def card_summary(c: ModelCard, path: Path) -> str:
    """The card in a dozen lines a person reads: the fields a clinic or an engineer asks
    about first; the JSON has everything. Every text from the card is escaped (a card is a
    file anyone may have edited: a newline must not forge a row) and every loose section
    is read defensively: an odd value reads '?', never a traceback."""
    pre = _dict(c.preprocessing)
    export = _dict(c.export)
    rule = f"sensitivity >= {c.target_sensitivity:g}" if c.target_sensitivity else "none"
    if c.min_specificity:
        rule += f", specificity >= {c.min_specificity:g}"
    negatives = [_text(lab) for lab in c.labels if lab != c.positive_label]
    dataset = _dict(c.dataset)
    rows = [
        ("model", f"{_text(c.family)} {_text(c.variant)}"
         + (f" (run {_text(c.parent)})" if c.parent else "")
         + (f", created {_text(c.created)}" if c.created else "")),
        ("input", f"{c.input_size}x{c.input_size}x{c.channels}, fit "
                  f"{_text(pre.get('fit', 'pad'))}, value range "
                  f"{_text(pre.get('value_range', '?'))}, intensity "
                  f"{_text(pre.get('intensity', 'none'))}"),
        ("labels", f"{_text(c.positive_label)} (positive) / {', '.join(negatives)}"),
        ("threshold", f"{c.threshold:.4g} (rule: {rule}), temperature {c.temperature:.4g}"),
        ("trained on", _text(dataset.get("name") or "not recorded")
         + (f" ({_text(c.data_fingerprint)})" if c.data_fingerprint else "")),
    ]
    validation = _dict(export.get("validation"))
    if validation:
        rows.append(("validation", _validation_line(validation)))
    rows += [(f"{split} at export", line) for split, line in _score_lines(_dict(c.metrics))]
    gate = _dict(c.gate)
    checks = ["quality"] + [label for key, label in (("appearance", "appearance"),
                                                      ("ood", "model features"))
                            if gate.get(key)]
    rows.append(("input gate", ", ".join(checks)))
    history = export.get("recalibrations")
    if isinstance(history, list) and history:
        last = _dict(history[-1])
        rows.append(("recalibrated", f"{len(history)} time(s); last "
                                     f"{_text(last.get('created', '?'))} on "
                                     f"{_text(last.get('data', '?'))} "
                                     f"({_text(last.get('images', '?'))} images)"))
    if c.notes:
        rows.append(("notes", _text(c.notes)))
    width = max(len(k) for k, _ in rows)
    return "\n".join([shown(path), *(f"  {k:<{width}}  {v}" for k, v in rows),
                      f"  (the whole card: edge-toolkit card {shlex.quote(shown(path))} "
                      "--json)"])


def _text(value: object) -> str:
    """A card value on one line, control characters escaped."""
    return shown(str(value))


def _dict(value: object) -> dict:
    return value if isinstance(value, dict) else {}


def _validation_line(v: dict) -> str:
    """'validated on val: AUC 0.888 against its float parent's 0.885 (tolerance 0.02)'."""
    line = f"{_text(v.get('status', '?'))} on {_text(v.get('split', 'val'))}"
    if is_finite_number(v.get("auc")) and is_finite_number(v.get("parent_auc")):
        line += (f": AUC {v['auc']:.3f} against its float parent's {v['parent_auc']:.3f} "
                 f"(tolerance {_text(v.get('tolerance', '?'))})")
    return line


def _score_lines(metrics: dict) -> list[tuple[str, str]]:
    """Per split, each source's AUC [95% CI] and sensitivity / specificity at the stored
    threshold (the pooled figures when the card has no sources)."""
    out = []
    for split in ("val", "test"):
        m = metrics.get(split)
        if not isinstance(m, dict):
            continue
        parts = [(_text(name), _dict(s)) for name, s in _dict(m.get("sources")).items()]
        out.append((split, "; ".join(_score(name, s) for name, s in parts or [("all", m)])))
    return out


def _score(name: str, s: dict) -> str:
    if "auc" not in s:
        return f"{name} AUC not recorded"
    auc, ci = s.get("auc"), s.get("auc_ci95")
    if not is_finite_number(auc):
        return f"{name} AUC undefined (one class)"
    text = f"{name} AUC {auc:.3f}"
    if isinstance(ci, list) and len(ci) == 2 and all(is_finite_number(x) for x in ci):
        text += f" [{ci[0]:.2f}, {ci[1]:.2f}]"
    point = _dict(_dict(s.get("operating_points")).get("high_sensitivity"))
    if is_finite_number(point.get("sensitivity")) and is_finite_number(point.get("specificity")):
        text += f", sens/spec {point['sensitivity']:.2f}/{point['specificity']:.2f}"
    return text
