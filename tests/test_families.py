"""The family registry is plain data: listed and read without TensorFlow, and every row's
builder resolves where the train extra is installed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from quantize_fixtures import block_tensorflow_code

from edge_toolkit.families import FAMILIES, get_family, list_families, preprocess_config


def test_families_are_data_with_one_defaults_dict_each():
    assert list_families() == ["mobilenetv2", "scratch_cnn", "seed_cnn"]
    for fam in FAMILIES.values():
        assert isinstance(fam.defaults, dict) and "input_size" in fam.defaults
        assert fam.builder.startswith("edge_toolkit.train.models:")
    mnv2 = get_family("mobilenetv2")
    assert mnv2.has_backbone and mnv2.config(input_size=160)["input_size"] == 160
    assert mnv2.config(input_size=None)["input_size"] == mnv2.defaults["input_size"]
    with pytest.raises(ValueError, match="unknown option"):
        mnv2.config(width=3)
    with pytest.raises(ValueError, match="unknown model family 'nope'"):
        get_family("nope")
    pre = preprocess_config("scratch_cnn", get_family("scratch_cnn").config(), fit="stretch")
    assert (pre["size"], pre["channels"], pre["value_range"], pre["fit"]) == (
        128, 1, "0,1", "stretch")


def test_registry_and_train_help_need_no_tensorflow():
    code = block_tensorflow_code() + (
        "from click.testing import CliRunner\n"
        "from edge_toolkit.families import list_families\n"
        "from edge_toolkit.cli import main\n"
        "res = CliRunner().invoke(main, ['train', '--help'])\n"
        "assert res.exit_code == 0, res.output\n"
        "assert all(f in res.output for f in list_families()), res.output\n"
        "assert 'tensorflow' not in sys.modules\n"
        "print('ok')\n")
    env = {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    import os

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_every_builder_resolves_where_training_is_installed():
    from extras import require

    require("tensorflow")
    for name in list_families():
        assert callable(get_family(name).build_function()), name
