"""The command line: ``python -m factlens.book``.

::

    python -m factlens.book --profile smoke|cpu|full|paper [--only CHAPTER ...] [-p KEY=VALUE ...]
                            [--force] [--no-html] [--strict] [--verbose] [--no-progress]
                            [--root DIR] [--build-dir DIR]

Prints its plan, executes the selected notebooks of ``_toc.yml`` whose code, parameters,
library, data or inputs changed and re-renders those whose markdown alone changed
(:mod:`factlens.book.execution`, :mod:`factlens.book.plan`), then builds the static site
(:mod:`factlens.book.site`). Exit status 1 with a one-paragraph message when a notebook or the
site fails, 130 when interrupted (the next build resumes with the chapter it stopped in).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from factlens.book.execution import execute
from factlens.book.site import build_html
from factlens.book.toc import PROFILES, BookError, common_parameters, find_root, parse_overrides, select, toc_notebooks


def build(
    profile: str,
    *,
    root: str | Path | None = None,
    build_dir: str | Path | None = None,
    only: Sequence[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    force: bool = False,
    stop_after: int | None = None,
    cell_timeout: float | None = None,
    html: bool = True,
    strict: bool = False,
    quiet: bool = True,
    progress_bar: bool = True,
    log: Any = print,
) -> Path | None:
    """Bring the selected notebooks' executed copies up to date (``force``: execute them all),
    then (``html``) build the site; returns index.html's path. ``stop_after`` and ``cell_timeout``: see
    :func:`factlens.book.execution.execute`."""
    root = find_root(root) if root is None else Path(root).resolve()
    if not (root / "_toc.yml").is_file():
        raise BookError(f"{root} has no _toc.yml")
    common_parameters(profile, ".")  # check the profile before anything runs
    notebooks = select(toc_notebooks(root), only)
    start = time.perf_counter()
    log(f"book at {root}: profile {profile}, {len(notebooks)} notebook(s)", flush=True)
    done = execute(root, notebooks, profile, build_dir=build_dir, overrides=overrides, force=force,
                   stop_after=stop_after, cell_timeout=cell_timeout, progress_bar=progress_bar, log=log)
    log("executed: " + (", ".join(f"{d.notebook} {d.seconds:.0f} s" for d in done) or "none"), flush=True)
    index = build_html(root, build_dir, strict=strict, quiet=quiet, log=log) if html else None
    log(f"total {time.perf_counter() - start:.1f} s", flush=True)
    return index


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m factlens.book",
        description="Execute the book's notebooks with papermill and build the static site (Jupyter Book 1).",
    )
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu",
                        help="size of the runs and model (default cpu)")
    parser.add_argument(
        "--only", action="append", metavar="CHAPTER",
        help="execute only notebooks whose path contains this folder or name (repeatable), "
        "e.g. lama, rome, rome/tracing",
    )
    parser.add_argument(
        "-p", "--parameter", action="append", default=[], metavar="KEY=VALUE",
        help="override a parameter for every notebook (repeatable), e.g. -p model_name=gpt2",
    )
    parser.add_argument("--force", action="store_true",
                        help="execute every selected notebook, even those whose executed copy is up to date")
    parser.add_argument("--stop-after", type=int, metavar="N", help=argparse.SUPPRESS)  # tests: interrupt a build
    parser.add_argument("--no-html", action="store_true", help="execute only; do not build the site")
    parser.add_argument("--strict", action="store_true", help="fail the site build on Sphinx warnings too")
    parser.add_argument("--root", type=Path, help="the book's root (default: found from the working directory)")
    parser.add_argument("--build-dir", type=Path, help="where executed/, results/, html/ go (default ROOT/_build)")
    parser.add_argument("--no-progress", action="store_true", help="no per-cell progress bar")
    parser.add_argument("--cell-timeout", type=float, metavar="SECONDS",
                        help="the most one cell may take; past it the notebook runs once more (default: no limit)")
    parser.add_argument("--verbose", action="store_true",
                        help="show Jupyter Book's full output (default: warnings and errors)")
    args = parser.parse_args(argv)
    try:
        index = build(
            args.profile,
            root=args.root,
            build_dir=args.build_dir,
            only=args.only,
            overrides=parse_overrides(args.parameter),
            force=args.force,
            stop_after=args.stop_after,
            cell_timeout=args.cell_timeout,
            html=not args.no_html,
            strict=args.strict,
            quiet=not args.verbose,
            progress_bar=not args.no_progress,
        )
    except BookError as err:
        print(f"\nbook build failed: {err}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("\nbook build interrupted: the next build resumes with the chapter it stopped in", file=sys.stderr)
        return 130
    if index is not None:
        print(f"open {index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
