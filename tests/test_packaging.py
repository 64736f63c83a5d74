"""The wheel works where the checkout is not: build it from this tree, install it into a fresh virtualenv (nothing
downloaded: the pinned dependencies of the current environment are made visible through a .pth path line), and run
the installed `thinktune` from an unrelated folder. The recipes, the sample data and the chat-template fixture must
ship inside the wheel (slow tier: a wheel build, a venv and several subprocesses)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, SRC

pytestmark = pytest.mark.slow

PACKAGE = SRC / "thinktune"
#: package data that must be in the wheel, as globs relative to src/thinktune (pyproject's package-data)
PACKAGE_DATA = (
    "data/sample/*.json",
    "data/sample/README.md",
    "models/templates/*.json",
    "configs/*.yaml",
    "ui/static/*",
)


def _env() -> dict[str, str]:
    """The environment without this checkout on the path (conftest puts src/ on PYTHONPATH for subprocesses)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return env | {"PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONNOUSERSITE": "1"}


def _run(cmd: list[str | Path], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, (
        f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    )
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, Path]:
    import importlib.util

    # --no-build-isolation builds with this environment's setuptools (here a dependency of torch)
    assert importlib.util.find_spec("setuptools"), "setuptools is not importable: the wheel cannot be built"
    root = tmp_path_factory.mktemp("packaging")
    # The wheel of this tree, built from a copy so the build leaves no build/ or *.egg-info in the checkout.
    tree = root / "tree"
    tree.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, tree / name)
    shutil.copytree(SRC, tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc"))
    wheels = root / "wheels"
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", wheels, tree], root
    )
    (wheel,) = wheels.glob("thinktune-*.whl")

    # A fresh venv; the wheel goes in first (its pip sees only the new venv), then the dependencies of this
    # environment become visible through a plain path line (which does not run that folder's .pth files, so the
    # editable install of the checkout stays out).
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", venv], root)
    python = venv / "bin" / "python"
    _run([python, "-m", "pip", "install", "--no-index", "--no-deps", wheel], root)
    site_packages = Path(
        _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root).stdout.strip()
    )
    ours = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    (site_packages / "thinktune-test-deps.pth").write_text("".join(p + "\n" for p in ours), encoding="utf-8")
    work = root / "elsewhere"
    work.mkdir()
    return {"wheel": wheel, "venv": venv, "python": python, "site": site_packages, "work": work}


def _thinktune(installed: dict[str, Path], *args: str | Path) -> str:
    return _run([installed["venv"] / "bin" / "thinktune", *args], installed["work"]).stdout


def test_the_wheel_holds_the_package_data(installed):
    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    for pattern in PACKAGE_DATA:
        expected = {f"thinktune/{p.relative_to(PACKAGE).as_posix()}" for p in PACKAGE.glob(pattern)}
        assert expected, f"src/thinktune/{pattern} matches nothing"
        assert expected <= names, f"missing from the wheel: {sorted(expected - names)}"
    assert "thinktune/models/templates/deepseek_r1_distill_qwen.tokenizer_config.json" in names
    assert {
        "thinktune/configs/demo-cpu.yaml",
        "thinktune/configs/medical-o1-r1-distill-qwen-1.5b.yaml",
    } <= names


def test_the_installed_thinktune_is_the_one_imported(installed):
    code = (
        "import thinktune, thinktune.configfile as c\n"
        "print(thinktune.__file__)\nprint(c.recipe_path('demo-cpu'))\n"
    )
    out = _run([installed["python"], "-c", code], installed["work"]).stdout.split()
    module, recipe = (Path(p).resolve() for p in out)
    for path in (module, recipe):
        assert path.is_relative_to(installed["site"].resolve()), path
        assert not path.is_relative_to(ROOT.resolve()), path


def test_recipes_list_show_and_copy(installed):
    packaged = installed["site"] / "thinktune" / "configs"
    names = sorted(p.stem for p in PACKAGE.glob("configs/*.yaml"))
    assert sorted(p.stem for p in packaged.glob("*.yaml")) == names

    listed = _thinktune(installed, "recipes")
    first_words = [line.split()[0] for line in listed.splitlines() if line and not line[0].isspace()]
    assert first_words == names
    assert listed.count("run: ") == len(names)

    shown = _thinktune(installed, "recipes", "show", "demo-cpu")
    assert shown == (packaged / "demo-cpu.yaml").read_text(encoding="utf-8")

    dest = installed["work"] / "my-demo.yaml"
    copied = _thinktune(installed, "recipes", "copy", "demo-cpu", dest)
    assert f"wrote {dest}" in copied
    assert dest.read_bytes() == (packaged / "demo-cpu.yaml").read_bytes()
    assert dest.read_bytes() == (PACKAGE / "configs" / "demo-cpu.yaml").read_bytes()  # what the tree ships


def test_config_resolves_a_packaged_recipe(installed):
    cfg = yaml.safe_load(_thinktune(installed, "config", "medical-o1-r1-distill-qwen-1.5b"))
    assert cfg["model"]["name_or_path"] == "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
    assert set(cfg) >= {"model", "data", "lora", "train", "eval", "generation"}
