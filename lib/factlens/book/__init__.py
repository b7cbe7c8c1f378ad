"""Build the book: execute the notebooks of ``_toc.yml`` with papermill, then render the static site.

One concern per module:

* :mod:`factlens.book.toc`: the table of contents and each notebook's parameters (the
  profile's, the sidecar ``<stem>.yml``'s, the ``-p`` overrides);
* :mod:`factlens.book.keys`: what decides a chapter's outputs (its key), and the record of its
  last successful execution (when, on which CPU, how long);
* :mod:`factlens.book.plan`: execute, re-render (markdown changed) or keep each chapter, and
  the estimated time of each (its last execution, or ``_timings.yml``'s measured time);
* :mod:`factlens.book.execution`: papermill, one fresh kernel per notebook, failures named by
  notebook and cell;
* :mod:`factlens.book.site`: the executed notebooks as the static book shows them, MathJax,
  and Jupyter Book 1;
* :mod:`factlens.book.anchors`: a Sphinx extension, the claims' anchors on the Claims page as
  link targets.

The command line is ``python -m factlens.book`` (:mod:`factlens.book.__main__`). Chapters write
their results with :mod:`factlens.evidence.results`, not here. Nothing here imports torch.
"""

from __future__ import annotations

from factlens.book.execution import (
    KERNEL_NAME,
    Executed,
    describe_failure,
    execute,
    kernel_environment,
    run_notebook,
)
from factlens.book.keys import build_digests, chapter_key, describe_execution, machine, read_record
from factlens.book.plan import (
    EXECUTE,
    RERENDER,
    TIMINGS,
    UP_TO_DATE,
    Chapter,
    Step,
    Timings,
    assess,
    format_plan,
    plan,
    read_timings,
    rerendered,
)
from factlens.book.site import build_html, for_the_site, mathjax_files, stage_site, with_execution_note
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
    "BUILD_PARAMETERS", "EXECUTE", "KERNEL_NAME", "PROFILES", "RERENDER", "TIMINGS", "UP_TO_DATE", "BookError",
    "Chapter", "Executed", "Step", "Timings", "assess", "build_digests", "build_html", "build_parameters",
    "chapter_key", "common_parameters", "declared_parameters", "describe_execution", "describe_failure", "execute",
    "find_root", "for_the_site", "format_plan", "kernel_environment", "machine", "mathjax_files",
    "notebook_parameters", "other_results", "parse_overrides", "parse_value", "plan", "read_record", "read_timings",
    "rerendered", "run_notebook", "select", "sidecar_parameters", "stage_site", "toc_documents", "toc_notebooks",
    "with_execution_note",
]
