"""Sphinx configuration of the snnfast documentation.

Build: ``pip install -e ".[docs]"`` then ``python -m sphinx -W --keep-going -b html docs
docs/_build/html`` (the API pages import snnfast, so its extensions must be built).
"""
import os
import sys

# the checkout's snnfast when it is built in place and not installed
sys.path.insert(0, os.path.abspath(".."))

from snnfast import __version__  # noqa: E402

project = "snnfast"
author = "snnfast developers"
copyright = "2026, snnfast developers"
version = release = __version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
]

# the API pages list members through autodoc; numpydoc only renders the docstring sections
numpydoc_show_class_members = False
autosummary_generate = False
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": False}

exclude_patterns = ["_build"]
html_theme = "furo"
html_title = f"snnfast {release}"
