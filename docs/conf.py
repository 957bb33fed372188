"""Sphinx configuration of attnlab's documentation (MyST markdown, autodoc, napoleon).

Build (from the repository root; CI runs exactly this, warnings are errors):

  .venv/bin/python -m sphinx -W --keep-going -b html docs docs/_build/html

Besides the pages, this file checks that the API reference covers every public function and
class of the package (:func:`_check_api_coverage`): a name missing from it is a warning, so a
new public name without an entry fails the build.
"""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)  # This checkout's attnlab, and configs/ for the examples' imports.

project = "attnlab"
author = "attnlab authors"
copyright = "attnlab authors"  # noqa: A001 (Sphinx's name)

extensions = [
  "myst_parser",
  "sphinx.ext.autodoc",
  "sphinx.ext.napoleon",
]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build"]
root_doc = "index"
html_theme = "alabaster"
html_title = "attnlab"
html_theme_options = {"description": "Soft and hard attention in JAX", "fixed_sidebar": True}
html_sidebars = {"**": ["about.html", "navigation.html", "searchbox.html"]}

myst_heading_anchors = 3  # `[text](page.md#a-heading)` links, as GitHub renders them.
myst_enable_extensions = ["colon_fence"]

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_class_signature = "separated"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # `Attributes:` as fields: no duplicate of autodoc's own entries.
napoleon_use_rtype = False

_PACKAGES = (
  "attnlab",
  "attnlab.efficient",
  "attnlab.estimators",
  "attnlab.modules",
  "attnlab.tasks",
  "attnlab.training",
  "attnlab.sweep",
)


def _exported_by_package(module_name: str, obj) -> bool:
  """Whether ``obj`` is exported (``__all__``) by a package above ``module_name``."""
  parts = module_name.split(".")
  for depth in range(len(parts) - 1, 0, -1):
    package = sys.modules.get(".".join(parts[:depth]))
    names = getattr(package, "__all__", ())
    if any(getattr(package, n, None) is obj for n in names):
      return True
  return False


def _skip_member(app, what, name, obj, skip, options):
  """Documents a name once: under the package that exports it, not again in its module."""
  if what == "module" and options.get("members") is not None:
    module = getattr(app.env, "temp_data", {}).get("autodoc:module")
    if (
      module
      and _exported_by_package(module, obj)
      and not hasattr(sys.modules.get(module), "__path__")
    ):
      return True
  doc = getattr(obj, "__doc__", None) or ""
  if doc.startswith("Alias for field number"):  # NamedTuple fields: in `Attributes:` instead.
    return True
  return None


def _public_names() -> dict[str, list[str]]:
  """Every public function and class: ``{defining module: [names]}``, and each package's
  ``__all__`` names (functions, classes) under the package."""
  names: dict[str, list[str]] = {}
  for package_name in _PACKAGES:
    package = importlib.import_module(package_name)
    for name in getattr(package, "__all__", ()):
      obj = getattr(package, name)
      if inspect.isfunction(obj) or inspect.isclass(obj):
        names.setdefault(package_name, []).append(name)
    for info in pkgutil.iter_modules(package.__path__):
      if info.ispkg:
        continue
      module = importlib.import_module(f"{package_name}.{info.name}")
      for name, obj in vars(module).items():
        defined_here = getattr(obj, "__module__", None) == module.__name__
        if name.startswith("_") or not defined_here:
          continue
        if inspect.isfunction(obj) or inspect.isclass(obj):
          names.setdefault(module.__name__, []).append(name)
  return names


def _check_api_coverage(app, env):
  """Warns for each public function or class that the API reference does not document."""
  from sphinx.util import logging

  log = logging.getLogger("attnlab.api")
  documented = set(env.get_domain("py").objects)
  for module_name, names in _public_names().items():
    module = sys.modules[module_name]
    for name in names:
      obj = getattr(module, name)
      candidates = {f"{module_name}.{name}"}
      candidates |= {
        f"{p}.{n}"
        for p in _PACKAGES
        for n in getattr(sys.modules[p], "__all__", ())
        if getattr(sys.modules[p], n, None) is obj
      }
      if not candidates & documented:
        log.warning(
          "API reference: %s.%s is public but not documented (no docstring, or its module "
          "is missing from docs/api/*.md)",
          module_name,
          name,
        )


def setup(app):
  app.connect("autodoc-skip-member", _skip_member)
  app.connect("env-check-consistency", _check_api_coverage)
