"""The table of export variants. Importable without TensorFlow: the TF-free benchmark and the
runtime use it to list and label variants; the exporter walks it and looks each entry's build
function up lazily (`Variant.builder` is a "module:function" string in a TF-importing module).
"""

from __future__ import annotations

from dataclasses import dataclass

# What the file's weights are stored as. "int8": weights and activations int8, full-integer
# (input and output too) unless `Variant.float_layers` keeps some ops float.
WEIGHT_TYPES = ("float32", "float16", "int8-weights", "int8")


@dataclass(frozen=True)
class Variant:
    """One deployable TFLite variant of a trained run."""

    name: str
    description: str
    weights: str  # float32 | float16 | int8-weights (dynamic range) | int8
    full_integer: bool  # every op int8: input/output types and a representative set apply
    fine_tune: str | None  # None | "qat" | "prune" | "prune+qat": trains before converting
    builder: str  # "module:function" that returns the Keras model to convert (TF side)
    requires: tuple[str, ...] = ()  # variants whose intermediate model this one reuses
    reference: bool = False  # the float file every other variant is compared with
    # the file averages the model's outputs on the image and on its mirror image (two passes
    # in one graph): the card and the runtime need nothing more, latency doubles
    mirror_average: bool = False
    # int8 with up to this many of the ops that lose most to int8 (measured by TFLite's
    # quantization debugger on train images at export) kept in float: those whose error is
    # at least twice plain rounding's, and always the worst (layer_error.fragile_ops);
    # float input and output
    float_layers: int = 0

    @property
    def needs_fine_tuning(self) -> bool:
        return self.fine_tune is not None

    @property
    def needs_representative_data(self) -> bool:
        return self.full_integer or self.float_layers > 0

    def file_name(self, family: str) -> str:
        return f"{family}-{self.name}.tflite"


_BUILD = "edge_toolkit.quantize.convert"
# int8-mixed's most float ops: on three real runs the fragile ops (twice rounding's error or
# more) were the top 3 and keeping them won back all but 0.001 of the val AUC that one float
# op left lost (benchmarks/README.md, "How many float ops")
MIXED_FLOAT_OPS = 3
# a float op after the worst only while they all add at most this share to the int8 file
MIXED_MAX_GROWTH = 0.02
VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("float32", "plain float32 TFLite: the reference", "float32", False, None,
            f"{_BUILD}:build_float", reference=True),
    Variant("float16", "float16 weights (half the size), float32 compute on CPU", "float16",
            False, None, f"{_BUILD}:build_float"),
    Variant("dynamic", "dynamic-range quantization: int8 weights, float activations",
            "int8-weights", False, None, f"{_BUILD}:build_float"),
    Variant("int8-ptq", "full-integer post-training quantization (representative train "
            "images)", "int8", True, None, f"{_BUILD}:build_float"),
    Variant("int8-qat", "quantization-aware fine-tuning (tfmot), then full-integer", "int8",
            True, "qat", "edge_toolkit.quantize.qat:build_qat"),
    Variant("pruned", "magnitude pruning to the target sparsity, fine-tuned, stripped, then "
            "full-integer post-training quantization", "int8", True, "prune",
            "edge_toolkit.quantize.prune:build_pruned"),
    Variant("int8-pqat", "prune-preserving QAT on the pruned model: the zeros survive "
            "int8", "int8", True, "prune+qat", "edge_toolkit.quantize.qat:build_pqat",
            requires=("pruned",)),
    Variant("int8-mixed", "int8 post-training quantization with the ops that lose most to "
            f"int8 (measured at export; up to {MIXED_FLOAT_OPS}, within "
            f"{MIXED_MAX_GROWTH:.0%} more bytes) kept in float; float input and output",
            "int8", False, None, f"{_BUILD}:build_float", float_layers=MIXED_FLOAT_OPS),
    Variant("int8-ptq-flip", "int8-ptq of the model averaged with its prediction on the "
            "mirrored image: both passes in one file, twice the latency", "int8", True, None,
            f"{_BUILD}:build_float", mirror_average=True),
    Variant("int8-qat-flip", "int8-qat's model averaged with its prediction on the mirrored "
            "image: both passes in one file, twice the latency", "int8", True, "qat",
            "edge_toolkit.quantize.qat:build_qat", requires=("int8-qat",),
            mirror_average=True),
    Variant("int8-mixed-flip", "int8-mixed of the model averaged with its prediction on the "
            "mirrored image: both passes in one file, twice the latency", "int8", False, None,
            f"{_BUILD}:build_float", mirror_average=True, float_layers=MIXED_FLOAT_OPS),
)}
# what export and the pipeline make when no variants are named: the mirror-averaged files are
# asked for by name (or with 'all'), as they double latency
DEFAULT_VARIANTS = tuple(n for n, v in VARIANTS.items() if not v.mirror_average)

# File statuses written to report.json / report.md and to the card's export.validation
VALIDATED = "validated"
FAILED_VALIDATION = "failed-validation"
EXPORT_FAILED = "export-failed"
NOT_VALIDATED = "not-validated"  # a loose file whose card holds no validation record


def get_variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}") from None


def parse_variants(spec: str | list[str] | tuple[str, ...] | None) -> list[Variant]:
    """'all', 'float32,int8-qat', or a list of names -> variants in table order, no repeats.
    Every name is checked, beside 'all' too: a misspelt one is refused, not ignored."""
    if spec is None:
        return [VARIANTS[n] for n in DEFAULT_VARIANTS]
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise ValueError("no variants given")
    for n in names:
        if n != "all":
            get_variant(n)
    if "all" in names:
        return list(VARIANTS.values())
    return [v for v in VARIANTS.values() if v.name in names]


def variant_of_file(name: str) -> Variant | None:
    """The variant a file name `<family>-<variant>.tflite` was written as (None if unknown)."""
    stem = name.rsplit("/", 1)[-1].removesuffix(".tflite")
    for v in sorted(VARIANTS.values(), key=lambda v: -len(v.name)):
        if stem.endswith(f"-{v.name}") or stem == v.name:
            return v
    return None
