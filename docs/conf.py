"""Sphinx configuration for the marsops API reference.

    pip install sphinx myst-parser                    # the "docs" extra of setup.py
    sphinx-build -W -b html docs docs/_build/html     # .ci/docs runs this (warnings as errors)

The API pages (api/*.rst) are generated here at every build from the package itself, so a new
public module, function or class is documented without editing anything: one page per public
module (every module whose dotted name has no part starting with "_"), members from its own
docstrings (autodoc + napoleon, Google style). The names re-exported by ``marsops`` are
documented once, on the ``marsops`` page, as ``marsops.NAME``. ``.ci/docs`` then checks that
every public function and class of every public module made it into the built inventory.
"""
import importlib
import inspect
import os
import pkgutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TRITON_INTERPRET", "1")  # no "Triton needs a GPU" noise on CPU-only machines

import marsops  # noqa: E402

project = "marsops"
author = "the marsops developers"
copyright = "the marsops developers"
release = marsops.__version__
version = release

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.viewcode", "myst_parser"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path = []
html_title = f"marsops {release}"

autodoc_default_options = {"members": True, "undoc-members": True, "show-inheritance": True,
                           "member-order": "bysource"}
autodoc_typehints = "signature"
autodoc_inherit_docstrings = False  # nn.Module's forward docstring is not ours
autoclass_content = "both"  # the class docstring and __init__'s
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# README sections are included as they are: their links point into the repository, not the docs.
myst_all_links_external = True
myst_heading_anchors = 3
suppress_warnings = ["myst.header"]  # included README sections start below the top heading level


def public_modules():
    """Every public module of marsops, sorted by name."""
    names = ["marsops"]
    for info in pkgutil.walk_packages(marsops.__path__, "marsops."):
        if not any(part.startswith("_") for part in info.name.split(".")[1:]):
            names.append(info.name)
    return sorted(names)


def reexported():
    """{id(object): name} of what ``marsops`` re-exports (documented on the marsops page only)."""
    return {id(getattr(marsops, n)): n for n in marsops.__all__}


def own_members(module):
    """Public functions and classes defined in `module` (not imported into it)."""
    return [n for n, o in vars(module).items()
            if not n.startswith("_") and (inspect.isfunction(o) or inspect.isclass(o))
            and getattr(o, "__module__", None) == module.__name__]


def write_api_pages():
    api = HERE / "api"
    api.mkdir(exist_ok=True)
    for old in api.glob("*.rst"):
        old.unlink()
    exported = reexported()
    modules = public_modules()
    for name in modules:
        module = importlib.import_module(name)
        title = f"``{name}``"
        lines = [title, "=" * len(title), "", f".. automodule:: {name}"]
        if name == "marsops":
            lines += ["   :members:", "   :imported-members:", "",
                      f"``marsops.__version__`` is ``{marsops.__version__!r}``; ``python -m marsops`` prints it "
                      "with the torch, CPU capability, backends and build in use."]
        else:
            skip = [n for n in own_members(module) if id(getattr(module, n)) in exported]
            if skip:
                lines.append(f"   :exclude-members: {', '.join(skip)}")
                lines += ["", "Documented on the :mod:`marsops` page: "
                          + ", ".join(f":func:`marsops.{n}`" if inspect.isfunction(getattr(module, n))
                                      else f":class:`marsops.{n}`" for n in skip) + "."]
        (api / f"{name}.rst").write_text("\n".join(lines) + "\n")
    index = ["API reference", "=============", "",
             "One page per public module; the ops and their modules are re-exported by :mod:`marsops`.", "",
             ".. toctree::", "   :maxdepth: 1", ""] + [f"   {name}" for name in modules]
    (api / "index.rst").write_text("\n".join(index) + "\n")


def write_benchmark_figures():
    """_figures.md: benchmarks/results/*.png as figures (the plots the benchmarks write)."""
    figures = sorted((ROOT / "benchmarks" / "results").glob("*.png"))
    lines = ["## Benchmark plots", ""]
    for png in figures:
        lines += [f"```{{figure}} ../benchmarks/results/{png.name}", f":alt: {png.stem}", "",
                  f"`benchmarks/results/{png.name}`", "```", ""]
    if not figures:
        lines.append("No plots yet: `python -m benchmarks` writes them to `benchmarks/results/`.")
    (HERE / "_figures.md").write_text("\n".join(lines) + "\n")


def public_bases(app, name, obj, options, bases):
    """Shows a private base class (``_RegionLossModule``) as its public bases (``nn.Module``)."""
    out = []
    for base in bases:
        stack = [base]
        while stack:
            b = stack.pop(0)
            if b.__name__.startswith("_"):
                stack[:0] = list(b.__bases__)
            elif b not in out:
                out.append(b)
    bases[:] = out


def setup(app):
    app.connect("autodoc-process-bases", public_bases)


write_api_pages()
write_benchmark_figures()
exclude_patterns.append("_figures.md")  # included by performance.md, not a page of its own
