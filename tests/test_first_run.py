"""What a newcomer meets first: the demo sample, a quiet run, progress with time left, and
benchmarks that say which CPU they ran on."""

from __future__ import annotations

import configparser
import csv
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from edge_toolkit.runtime.bench import cpu_info, host_info, int8_note
from edge_toolkit.train.quiet import stderr_to

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "demo"

EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse avx avx2 fma
"""
XEON = "model name\t: Intel(R) Xeon(R) Platinum\nflags\t\t: avx2 avx512f avx512_vnni\n"
PI5 = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp asimddp
CPU part\t: 0xd0b
Model\t\t: Raspberry Pi 5 Model B Rev 1.0
"""


def test_cpu_info_names_the_model_and_its_int8_features():
    amd = cpu_info(EPYC)
    assert amd == {"cpu_model": "AMD EPYC 7B13", "int8_features": []}
    assert "no int8 dot-product" in int8_note(amd)
    assert cpu_info(XEON)["int8_features"] == ["avx512_vnni"]
    pi = cpu_info(PI5)
    assert pi["cpu_model"] == "Raspberry Pi 5 Model B Rev 1.0"
    assert pi["int8_features"] == ["asimddp"] and "asimddp" in int8_note(pi)
    here = host_info()
    assert here["cpu_model"] and isinstance(here["int8_features"], list)


def test_stderr_to_keeps_low_level_writes_out_of_the_terminal(tmp_path):
    code = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from edge_toolkit.train.quiet import stderr_to\n"
        "with stderr_to(Path(sys.argv[1])):\n"
        "    os.write(2, b'E0000 cuda_platform.cc failed call to cuInit\\n')\n"
        "    print('python warning', file=sys.stderr)\n"
        "print('own output')\n"
        "print('after', file=sys.stderr)\n")
    log = tmp_path / "tf.log"
    proc = subprocess.run([sys.executable, "-c", code, str(log)], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "own output\n" and proc.stderr == "after\n"
    assert log.read_text() == "E0000 cuda_platform.cc failed call to cuInit\npython warning\n"
    with stderr_to(tmp_path / "again.log"):  # and it nests with pytest's own capture
        pass


def test_eta_progress_lines():
    pytest.importorskip("tensorflow")
    from edge_toolkit.quantize.finetune import EtaProgress, eta_text

    assert [eta_text(s) for s in (4.4, 59.4, 61, 3725)] == [
        "4 s", "59 s", "1 min 01 s", "62 min 05 s"]
    now = [0.0]
    lines: list[str] = []
    cb = EtaProgress(epochs=2, steps=10, log=lines.append, label="int8-qat", every=15,
                     clock=lambda: now[0])
    cb.on_train_begin()
    for epoch in range(2):
        cb.on_epoch_begin(epoch)
        for batch in range(10):
            now[0] += 20.0 if (epoch, batch) == (0, 0) else 2.0  # batch one builds the graph
            cb.on_train_batch_end(batch)
    assert lines[0] == ("int8-qat: epoch 1/2, batch 1/10 (5%), 20 s spent, "
                        "estimating the time left")
    # later lines: 2 s per batch since batch one, times the batches left
    assert lines[1] == "int8-qat: epoch 1/2, batch 9/10 (45%), 36 s spent, about 22 s left"
    assert len(lines) == 3 and lines[2].endswith("about 6 s left")


def test_demo_sample_is_small_attributed_and_leak_free():
    if not DEMO.is_dir():
        pytest.skip("no demo/ folder (an installed package, not a clone)")
    files = [p for p in DEMO.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 10 * 2**20
    for source, licence in (("fracture-xray", "ODC-By"), ("fracatlas", "CC BY 4.0")):
        root = DEMO / source
        assert licence in (root / "LICENSE").read_text()
        rows = list(csv.DictReader(open(root / "manifest.csv", newline="")))
        images = {p.relative_to(root).as_posix() for p in root.rglob("*.jpg")}
        assert images == {r["path"] for r in rows}
        splits_of = defaultdict(set)
        for r in rows:
            splits_of[r["group"]].add(r["split"])
            assert r["path"].startswith(f"{r['split']}/{r['label']}/")
        assert all(len(s) == 1 for s in splits_of.values()), "a group crosses splits"
        for split in ("train", "val", "test"):
            labels = {r["label"] for r in rows if r["split"] == split}
            assert labels == {"fractured", "not fractured"}


def test_demo_sample_stays_out_of_the_wheel():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    assert cfg["metadata"]["name"] == "fracture-edge-toolkit"
    assert "demo" not in cfg["options.package_data"]["edge_toolkit"]
    assert not (REPO / "edge_toolkit" / "demo").exists()
