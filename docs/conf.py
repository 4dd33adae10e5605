"""Sphinx configuration: the API reference from the docstrings, the user guide from the README."""

from __future__ import annotations

import cachelib

project = "cachelib"
author = "the cachelib developers"
copyright = "2026, the cachelib developers"
release = cachelib.__version__
version = ".".join(release.split(".")[:2])

extensions = ["sphinx.ext.autodoc", "sphinx.ext.viewcode"]
exclude_patterns = ["_build"]
root_doc = "index"
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
html_theme = "alabaster"
html_static_path: list[str] = []
