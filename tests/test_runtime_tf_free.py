"""The one rule: the device runtime never imports TensorFlow or Keras, even indirectly.

Checked in fresh interpreters (this test process may have TensorFlow loaded by others):
after importing every runtime module, and while running `classify` and `bench` with an import
hook that makes TensorFlow and Keras unimportable, as on a Raspberry Pi with the base install.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from tiny_models import RUNTIME_MODELS, cached_models, make_images

FORBIDDEN = ("tensorflow", "keras", "tf_keras", "tensorflow_model_optimization")

BLOCKER = textwrap.dedent("""
    import sys
    BLOCKED = {blocked!r}
    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{{name}} is blocked: the runtime must not import it")
            return None
    sys.meta_path.insert(0, Blocker())
""")


def python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=120)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return cached_models(tmp_path_factory, RUNTIME_MODELS)


def test_importing_the_runtime_loads_no_tensorflow():
    code = textwrap.dedent("""
        import importlib, json, pkgutil, sys
        import edge_toolkit.runtime as rt
        import edge_toolkit.runtime.cli
        for mod in pkgutil.iter_modules(rt.__path__):
            importlib.import_module(f"edge_toolkit.runtime.{mod.name}")
        from edge_toolkit.cli import main
        for name in ("classify", "capture", "bench"):
            main.get_command(None, name)
        print(json.dumps(sorted(sys.modules)))
    """)
    proc = python(code)
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout)
    heavy = [m for m in loaded if m.split(".")[0] in FORBIDDEN]
    assert heavy == []
    assert "edge_toolkit.runtime.camera" in loaded and "edge_toolkit.runtime.bench" in loaded


def test_classify_and_bench_run_with_tensorflow_unimportable(models, tmp_path):
    image = make_images(tmp_path, 1)[0]
    code = BLOCKER.format(blocked=FORBIDDEN) + textwrap.dedent("""
        from edge_toolkit.cli import main
        main(sys.argv[1:])
    """)
    proc = python(code, "classify", str(models["uint8"]), str(image), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[0]["status"] == "ok"
    proc = python(code, "bench", str(models["uint8"]), "--in-process", "--runs", "3",
                  "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["models"][0]["runs"][0]["mean_ms"] > 0


def test_without_an_interpreter_the_message_says_what_to_install(models, tmp_path):
    image = make_images(tmp_path, 1)[0]
    code = BLOCKER.format(blocked=FORBIDDEN + ("ai_edge_litert", "tflite_runtime")) + (
        "from edge_toolkit.cli import main\nmain(sys.argv[1:])\n")
    proc = python(code, "classify", str(models["float"]), str(image))
    assert proc.returncode == 2
    assert "pip install ai-edge-litert" in proc.stderr and "tflite-runtime" in proc.stderr
    assert "Traceback" not in proc.stderr
