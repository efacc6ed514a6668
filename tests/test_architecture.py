"""The house's layers: modules import only downward, DeepSpeed only behind the backend seam, no class grows past
~200 lines, every command line answers `--help` without torch, and a wheel carries the packaged configs."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "takd"
# lowest first; a module belongs to the longest prefix that names it
LAYERS = [
    ("takd", "takd.config", "takd.paths", "takd.checkpoint", "takd.dist", "takd.losses", "takd.errors"),
    ("takd.data",),
    ("takd.models",),
    ("takd.sampling",),
    ("takd.evaluate",),
    ("takd.train",),
    ("takd.report",),
    ("takd.chain",),
    ("takd.cli", "takd.__main__", "takd.plan", "takd.status", "takd.prepare", "takd.replicate"),
]
CLIS = ["takd.cli", "takd.chain.cli", "takd.train.cli", "takd.evaluate.cli", "takd.chain.prepare",
        "takd.chain.status", "takd.report.cli", "takd.chain.replicate"]


def _modules() -> dict[str, Path]:
    out = {}
    for f in PACKAGE.rglob("*.py"):
        parts = list(f.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def _imports(path: Path) -> set[str]:
    """Every module imported anywhere in the file (top level and inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def _layer(module: str) -> int:
    best, layer = -1, None
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, layer = len(p), i
    assert layer is not None, module
    return layer


def test_every_module_imports_only_its_own_layer_or_below():
    modules = _modules()
    bad = []
    for name, path in modules.items():
        for imp in _imports(path):
            if imp.startswith("takd") and (imp in modules or imp.rsplit(".", 1)[0] in modules):
                target = imp if imp in modules else imp.rsplit(".", 1)[0]
                if _layer(target) > _layer(name):
                    bad.append(f"{name} imports {target}")
    assert not bad, bad


def test_deepspeed_lives_behind_the_backend_seam_only():
    users = {name for name, path in _modules().items() if any(i.split(".")[0] == "deepspeed" for i in _imports(path))}
    assert users == {"takd.train.deepspeed_backend"}


def test_no_class_is_a_god_class():
    long = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > 200:
                long.append(f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not long, long


_BLOCK_TORCH = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers", "deepspeed", "pandas", "matplotlib"):
            raise ImportError(f"{name} imported by a command line before it runs work")
sys.meta_path.insert(0, Block())
import importlib, io, contextlib
for module in sys.argv[1:]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            code = importlib.import_module(module).main(["--help"])
        except SystemExit as stop:
            code = stop.code
    assert code in (0, None) and "usage" in out.getvalue().lower() or "takd <command>" in out.getvalue(), module
print("ok")
"""


def test_every_command_line_answers_help_without_torch():
    done = subprocess.run([sys.executable, "-c", _BLOCK_TORCH, *CLIS], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


@pytest.mark.parametrize("module", ["takd.plan", "takd.train", "takd.evaluate", "takd.prepare", "takd.status",
                                    "takd.report", "takd"])
def test_python_dash_m_forms_print_help(module):
    done = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.strip(), (module, done.stderr[-1000:])


def test_a_wheel_carries_the_configs_and_every_console_script(tmp_path):
    src = tmp_path / "src"  # a copy: building in place would leave build/ in the checkout
    shutil.copytree(REPO / "takd", src / "takd", ignore=shutil.ignore_patterns("__pycache__"))
    for f in ("pyproject.toml", "README.md", "requirements.txt", "requirements-dev.txt"):
        shutil.copy2(REPO / f, src / f)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                           str(tmp_path), str(src)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = tmp_path.glob("takd-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for f in ["takd/configs/chains/tiny.yaml", "takd/configs/models/tiny.yaml", "takd/configs/clusters/narval.yaml",
              "takd/configs/deepspeed/zero3.json"]:
        assert f in names, f
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    for cmd in ["takd", "takd-plan", "takd-train", "takd-evaluate", "takd-prepare", "takd-status", "takd-report"]:
        assert f"{cmd} = " in scripts, cmd
