"""The small things a user of the package expects: the version, `python -m marsops`, py.typed,
and the README's Set up commands that CI reads out of it."""
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import marsops

ROOT = Path(__file__).resolve().parent.parent


def test_version_is_one_string_everywhere():
    assert isinstance(marsops.__version__, str) and marsops.__version__[0].isdigit()
    try:
        installed = metadata.version("marsops")
    except metadata.PackageNotFoundError:
        pytest.skip("marsops is not installed (a source checkout on sys.path)")
    assert installed == marsops.__version__  # setup.py reads marsops/_version.py


def test_python_m_marsops_reports_the_install():
    out = subprocess.run([sys.executable, "-m", "marsops"], capture_output=True, text=True, timeout=300,
                         cwd=Path(marsops.__file__).parent.parent)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert f"marsops {marsops.__version__}" in text
    import torch

    assert f"torch {torch.__version__}" in text and "CPU capability" in text and "build:" in text
    for backend, state in marsops.backends().items():
        assert f"{backend:10s} {state}" in text


def test_ships_its_type_hints():
    assert (Path(marsops.__file__).parent / "py.typed").exists()


def test_readme_marks_the_set_up_commands():
    script = ROOT / ".ci" / "readme_commands.py"
    if not (script.exists() and (ROOT / "README.md").exists()):
        pytest.skip("not in a source checkout")
    out = subprocess.run([sys.executable, str(script), "--list"], capture_output=True, text=True, check=True)
    commands = dict(line.split(": ", 1) for line in out.stdout.splitlines())
    assert set(commands) == {"install", "test", "train"}
    assert commands["install"].startswith("pip install") and "pytest" in commands["test"]
    assert commands["train"].startswith("python train.py")
