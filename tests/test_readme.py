"""Every ```python block of the README runs here, on CPU, so the README cannot drift from the API.

Blocks run in the README's order in one namespace, as a reader pasting them one after another
would run them (a later block may use names an earlier one defined). A block whose first line
starts with ``>>>`` is an interactive session, checked as a doctest (``...`` in the expected
output stands for text that differs between machines). A block that imports an optional package
that is not installed (torchmetrics, say) is skipped from that import on.
"""
import doctest
import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parent.parent / "README.md"
OPTIONAL = {"torchmetrics", "monai", "segmentation_models_pytorch", "lightning"}
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)


def python_blocks(text):
    """[(line number, source)] of the ```python blocks of `text`."""
    return [(text.count("\n", 0, m.start()) + 2, m.group(1)) for m in FENCE.finditer(text)]


BLOCKS = python_blocks(README.read_text()) if README.exists() else []


class _Session:
    """The namespace the blocks share, and how far it has run (so one block alone, -k, still works)."""

    def __init__(self):
        self.namespace = {"__name__": "readme"}
        self.done = 0

    def run_until(self, index):
        while self.done <= index:
            line, source = BLOCKS[self.done]
            self.done += 1
            try:
                _run(line, source, self.namespace)
            except ImportError as exc:
                missing = _missing_optional(exc)
                if missing is None:
                    raise
                if self.done - 1 == index:
                    pytest.skip(f"README.md:{line}: needs {missing}, which is not installed")


def _missing_optional(exc):
    """The optional package whose absence raised `exc` (directly, or as the cause of a wrapping
    ImportError such as marsops.integrations' own message), else None."""
    while exc is not None:
        if isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] in OPTIONAL:
            return exc.name.split(".")[0]
        exc = exc.__cause__ or exc.__context__
    return None


def _run(line, source, namespace):
    if source.lstrip().startswith(">>>"):
        test = doctest.DocTestParser().get_doctest(source, namespace, f"README.md:{line}", str(README), line - 1)
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        out = []
        runner.run(test, out=out.append, clear_globs=False)
        assert runner.failures == 0, "".join(out)
        namespace.update(test.globs)
    else:
        code = compile("\n" * (line - 1) + source, str(README), "exec")  # tracebacks point into README.md
        exec(code, namespace)


@pytest.fixture(scope="module")
def session():
    torch.manual_seed(0)
    return _Session()


def test_readme_has_python_blocks():
    if not README.exists():
        pytest.skip("README.md is not beside the tests (an installed-package run)")
    assert len(BLOCKS) >= 5, "the README's python blocks went missing: check FENCE"


@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=[f"README.md:{line}" for line, _ in BLOCKS])
def test_readme_block(session, index):
    with torch.random.fork_rng():
        torch.manual_seed(index)
        session.run_until(index)
