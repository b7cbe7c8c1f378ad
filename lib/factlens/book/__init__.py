"""Build the book: execute every notebook of ``_toc.yml`` with papermill, then render the static site.

Three concerns, one module each:

* :mod:`factlens.book.toc`: the table of contents and each notebook's parameters (the
  profile's, the sidecar ``<stem>.yml``'s, the ``-p`` overrides);
* :mod:`factlens.book.execution`: papermill, one fresh kernel per notebook, failures named by
  notebook and cell;
* :mod:`factlens.book.site`: the executed notebooks as the static book shows them, MathJax,
  and Jupyter Book 1.

The command line is ``python -m factlens.book`` (:mod:`factlens.book.__main__`). Chapters write
their results with :mod:`factlens.evidence.results`, not here. Nothing here imports torch.
"""

from __future__ import annotations

from factlens.book.execution import KERNEL_NAME, Executed, describe_failure, execute, kernel_environment
from factlens.book.site import build_html, for_the_site, mathjax_files, stage_site
from factlens.book.toc import (
    BUILD_PARAMETERS,
    PROFILES,
    BookError,
    build_parameters,
    common_parameters,
    declared_parameters,
    find_root,
    notebook_parameters,
    other_results,
    parse_overrides,
    parse_value,
    select,
    sidecar_parameters,
    toc_documents,
    toc_notebooks,
)

__all__ = [
    "BUILD_PARAMETERS", "KERNEL_NAME", "PROFILES", "BookError", "Executed", "build_html", "build_parameters",
    "common_parameters", "declared_parameters", "describe_failure", "execute", "find_root", "for_the_site",
    "kernel_environment", "mathjax_files", "notebook_parameters", "other_results", "parse_overrides",
    "parse_value", "select", "sidecar_parameters", "stage_site", "toc_documents", "toc_notebooks",
]
