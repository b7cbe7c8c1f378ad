"""Shared fixtures. Keep this small: a fixture used by one test file belongs in that file."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@contextlib.contextmanager
def headless_chromium(window_size: str, *flags: str) -> Iterator:
    """Debian's Chromium driven by selenium through chromium-driver (no browser download),
    headless, with ``window_size`` ("W,H") and any further ``flags``; quit on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not Path(CHROMIUM).exists() or not Path(CHROMEDRIVER).exists():
        pytest.fail("headless Chromium is missing: `make test` installs Debian's chromium and chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--window-size={window_size}", *flags):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


TINY_MODELS = ("tiny-gemma3", "tiny-gpt2")


@pytest.fixture(scope="session", autouse=True)
def computed_afresh() -> Iterator[None]:
    """The tests check computations, so ROME's k* and v* (and with v*, MEMIT's z) are computed, neither
    read from the cache nor written to it (``$FACTLENS_RECOMPUTE``); tests of their cache unset it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FACTLENS_RECOMPUTE", "v_star,k_star")
        yield


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests that take ``tiny`` run once per tiny random model: both families unless the test's
    module names its own ``TINY_MODELS``."""
    if "tiny" in metafunc.fixturenames:
        names = getattr(metafunc.module, "TINY_MODELS", TINY_MODELS)
        metafunc.parametrize("tiny", names, indirect=True, scope="module")


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models are dominated by thread start-up on a shared machine: a module that uses this
    (``pytestmark = pytest.mark.usefixtures("one_thread")``) runs on one thread."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(request: pytest.FixtureRequest):
    """A tiny model with random weights (``tiny-gemma3``, ``tiny-gpt2``), loaded once per module."""
    from factlens.core.models import load_model

    return load_model(request.param, device="cpu")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (the book's root: _toc.yml, _config.yml)."""
    return REPO_ROOT


@pytest.fixture
def fixture_book(tmp_path: Path) -> Path:
    """A copy of tests/fixtures/book (a tiny book whose notebooks need no model) in tmp_path."""
    root = tmp_path / "book"
    shutil.copytree(FIXTURES / "book", root)
    return root


@pytest.fixture(scope="session")
def smoke_book(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real book built once per session with the smoke profile: every notebook of _toc.yml
    executed, then the site, Sphinx warnings as errors (``--strict``: a broken reference or a
    missing figure fails). Built in two steps, as an interrupted build resumes: the first stops
    after its second chapter, the second executes the rest (their logs: ``interrupted.log`` and
    ``resumed.log`` beside the html). Returns the html folder; ``<it>/../executed`` holds the
    executed notebooks and ``<it>/../results`` the chapters' results."""
    build = tmp_path_factory.mktemp("smoke-book")
    # --cell-timeout: a cell that never returns (a reply the kernel sent and the client never got, seen
    # once in a widget cell while other processes shared the cores) costs 15 minutes and one re-run
    command = [sys.executable, "-m", "factlens.book", "--profile", "smoke", "--no-progress", "--strict",
               "--cell-timeout", "900", "--root", str(REPO_ROOT), "--build-dir", str(build)]
    for log, extra, expected in [("interrupted.log", ["--stop-after", "2", "--no-html"], 130), ("resumed.log", [], 0)]:
        out = subprocess.run([*command, *extra], capture_output=True, text=True)
        (build / log).write_text(out.stdout)
        if out.returncode != expected:
            pytest.fail(f"the smoke book did not build ({log[:-4]}: exit {out.returncode}):\n{out.stdout[-4000:]}\n"
                        f"{out.stderr[-4000:]}")
    return build / "html"
