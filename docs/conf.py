"""Sphinx configuration of fastlstm's documentation.

Build: ``python -m sphinx -W -b html docs docs/_build/html`` (needs the ``docs`` extra and
fastlstm installed, e.g. ``pip install -e ".[docs]"``).  The pages are the Markdown files of
this folder, read by myst-parser, so that the same files read well on GitHub; the API
reference comes from the numpydoc docstrings.  Nothing is fetched from the network.
"""

import fastlstm

project = "fastlstm"
author = "fastlstm developers"
copyright = "fastlstm developers, BSD-3-Clause"
version = release = fastlstm.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# myst-parser: anchors for "page.md#section" links.
myst_heading_anchors = 3
myst_enable_extensions: list = []

# autodoc and autosummary: documented names are listed in api.rst; no stub files are
# generated into the source folder.
autosummary_generate = False
autodoc_default_options = {"member-order": "bysource"}
autodoc_typehints = "none"  # the numpydoc sections describe the types and shapes

# numpydoc: api.rst lists the members itself.
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

# Every cross-reference must resolve (with -W, a broken one fails the build).
nitpicky = True
nitpick_ignore = [
    ("py:class", "_pickle.UnpicklingError"),  # pickle.UnpicklingError, a base of UnsafeFileError
]

# No intersphinx: the build must not need the network.

html_theme = "furo"
html_title = f"fastlstm {release}"
html_static_path: list = []

# Pages link to files outside docs/ by their paths in the repository, which is what GitHub
# shows; on the site those links go to the pages that include the files instead.
_SITE_LINKS = {
    "](../benchmarks/README.md": "](benchmarks.md",
    "](../benchmarks/results/default.md)": "](#fastlstm-benchmark)",
}


def _site_links(app, docname, source):
    for path, target in _SITE_LINKS.items():
        source[0] = source[0].replace(path, target)


def setup(app):
    app.connect("source-read", _site_links)
