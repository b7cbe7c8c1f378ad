"""The chapters' prose names the claim behind every result it states.

A sentence of a chapter (a markdown cell of ``chapters/**/*.ipynb``, or ``chapters/intro.md``) that
says a result reproduces, confirms, matches, fails or differs names the claim it rests on, with the
book's one link form (``factlens.evidence.claims.anchor``)::

    [claim rome.counterfact.ES.ROME](../claims.ipynb#claim-rome-counterfact-es-rome)

and every claim a link names is registered by some notebook's ``run.claim`` call (read from the
code cells: the chapter of ``results.Run("<chapter>", ...)``, the id the call's first argument, an
f-string's fields expanded over the literal tuples its loops run over).
"""

from __future__ import annotations

import ast
import itertools
import json
import re
from pathlib import Path

import pytest

from factlens.evidence.claims import CLAIMS_PAGE, anchor

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = ROOT / "chapters"
CLAIMS = CHAPTERS / CLAIMS_PAGE
# Pages whose words name verdicts, not results: the Claims page defines "reproduced", "partly" and
# "not reproduced", and every row of its table is a claim.
EXEMPT = {CLAIMS}

RESULT_WORDS = re.compile(r"\b(reproduce[sd]?|confirm(?:s|ed)?|match(?:es|ed)?|fail(?:s|ed)?|differ(?:s|ed)?)\b",
                          re.IGNORECASE)
CLAIM_LINK = re.compile(r"\[claim ([\w.+/-]+)\]\(([^)#\s]*)#([\w-]+)\)")


# --------------------------------------------------------------------------- reading the pages


def pages() -> list[Path]:
    return sorted(CHAPTERS.glob("**/*.ipynb")) + [CHAPTERS / "intro.md"]


def markdown_of(page: Path) -> list[str]:
    """The page's markdown: each markdown cell of a notebook, or the whole of a .md file."""
    if page.suffix == ".md":
        return [page.read_text()]
    cells = json.loads(page.read_text())["cells"]
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "markdown"]


def code_of(page: Path) -> list[str]:
    cells = json.loads(page.read_text())["cells"]
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]


_FENCE = re.compile(r"^(```|~~~).*?^\1\s*$", re.M | re.S)
_DISPLAY_MATH = re.compile(r"\$\$.*?\$\$", re.S)
_INLINE_MATH = re.compile(r"(?<![\\$])\$[^$\n]+\$")
_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"(?<!!)\[([^\]]*)\]\([^)]*\)")
_COMMENT = re.compile(r"<!--.*?-->", re.S)
_BLOCK_START = re.compile(r"^\s*(?:[*+-]|\d+\.|#+|\||>)\s")
_SENTENCE_END = re.compile(r"(?<=[.!?:;])\s+(?=[A-Z*_(\"'])")


def sentences(markdown: str) -> list[str]:
    """The sentences of a markdown text, with code, math and link targets taken out and every claim
    link kept whole (as ``CLAIM<id>``): paragraphs and list items, table rows and headings are
    blocks, and a block splits after ., !, ?, : or ; before a capital."""
    text = CLAIM_LINK.sub(lambda m: f"CLAIM<{m.group(1)}>", markdown)
    for pattern in (_COMMENT, _FENCE, _DISPLAY_MATH):
        text = pattern.sub(" ", text)
    text = _LINK.sub(lambda m: m.group(1), _CODE.sub(" ", _INLINE_MATH.sub(" ", text)))
    blocks: list[list[str]] = []
    for line in text.splitlines():
        if not line.strip():
            blocks.append([])
        elif _BLOCK_START.match(line) or not blocks:
            blocks.append([line.strip()])
        else:
            blocks[-1].append(line.strip())
    out = []
    for block in blocks:
        out += [s.strip() for s in _SENTENCE_END.split(" ".join(block)) if s.strip()]
    return out


# --------------------------------------------------------------------------- the registered claims


def _loop_bindings(tree: ast.AST) -> dict[str, set[str]]:
    """The string constants a ``for`` binds its names to, where it runs over a literal tuple or list (of
    constants, or of tuples whose items a tuple of names unpacks)."""
    bound: dict[str, set[str]] = {}
    for loop in (n for n in ast.walk(tree) if isinstance(n, ast.For)):
        if not isinstance(loop.iter, (ast.Tuple, ast.List)):
            continue
        targets = loop.target.elts if isinstance(loop.target, ast.Tuple) else [loop.target]
        for item in loop.iter.elts:
            values = item.elts if len(targets) > 1 and isinstance(item, ast.Tuple) else [item]
            for target, value in zip(targets, values):
                if isinstance(target, ast.Name) and isinstance(value, ast.Constant) and isinstance(value.value, str):
                    bound.setdefault(target.id, set()).add(value.value)
    return bound


def _expand(node: ast.AST, bound: dict[str, set[str]]) -> list[str]:
    """A claim id's possible values as regular expressions: a constant as itself, a name or an f-string's
    field as the values its loop binds (otherwise any run of characters without a dot)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [re.escape(node.value)]
    if isinstance(node, ast.Name) and node.id in bound:
        return [re.escape(v) for v in sorted(bound[node.id])]
    if not isinstance(node, ast.JoinedStr):
        return [r"[^.\s]+(?:\.[^.\s]+)*"]
    parts: list[list[str]] = []
    for value in node.values:
        if isinstance(value, ast.Constant):
            parts.append([re.escape(str(value.value))])
        elif isinstance(value, ast.FormattedValue) and isinstance(value.value, ast.Name) \
                and value.value.id in bound:
            parts.append([re.escape(v) for v in sorted(bound[value.value.id])])
        else:
            parts.append([r"[^.\s]+"])
    return ["".join(p) for p in itertools.product(*parts)]


def registered_claims() -> list[re.Pattern]:
    """A pattern per full claim id (``<chapter>.<id>``) some notebook registers with ``run.claim``."""
    found = []
    for page in sorted(CHAPTERS.glob("**/*.ipynb")):
        trees = []
        for source in code_of(page):
            try:
                trees.append(ast.parse(source))
            except SyntaxError:
                continue
        chapter = None
        for tree in trees:
            for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
                func = call.func
                if isinstance(func, ast.Attribute) and func.attr == "Run" and call.args \
                        and isinstance(call.args[0], ast.Constant):
                    chapter = call.args[0].value
        for tree in trees:
            bound = _loop_bindings(tree)
            for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
                func = call.func
                if isinstance(func, ast.Attribute) and func.attr == "claim" and isinstance(func.value, ast.Name) \
                        and func.value.id == "run" and call.args:
                    assert chapter, f"{page.relative_to(ROOT)} registers claims before opening a results.Run"
                    found += [re.compile(re.escape(chapter) + r"\." + p) for p in _expand(call.args[0], bound)]
    return found


# --------------------------------------------------------------------------- the tests


def test_the_sentence_splitter_on_a_hand_made_text():
    text = ("# A heading\n\nOurs reproduces the paper's number "
            "([claim lama.x](../claims.ipynb#claim-lama-x)). It differs in `code` and $x$.\n"
            "* one item: it fails\n* [a link](http://a.b) and $$y$$ matches\n\n```\nreproduced\n```\n")
    assert sentences(text) == ["# A heading", "Ours reproduces the paper's number (CLAIM<lama.x>).",
                               "It differs in   and  .", "* one item: it fails", "* a link and   matches"]


def test_the_registered_claims_are_read_from_the_notebooks():
    patterns = registered_claims()
    assert len(patterns) > 30
    assert any(p.fullmatch("lama.trex_left_context") for p in patterns)
    assert not any(p.fullmatch("lama.no_such_claim") for p in patterns)


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(CHAPTERS)))
def test_every_result_sentence_names_its_claim(page):
    if page in EXEMPT:
        pytest.skip("the Claims page: its words name verdicts, and its rows are the claims")
    bare = [s for md in markdown_of(page) for s in sentences(md) if RESULT_WORDS.search(s) and "CLAIM<" not in s]
    listed = "\n".join(f"  - {s}" for s in bare)
    assert not bare, (f"{page.relative_to(ROOT)}: sentences that state a result without naming its claim "
                      f"([claim <chapter>.<id>](<path>/claims.ipynb#claim-...)):\n{listed}")


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(CHAPTERS)))
def test_every_claim_link_lands_on_a_registered_claim(page):
    patterns = registered_claims()
    for markdown in markdown_of(page):
        for full_id, path, target in CLAIM_LINK.findall(_CODE.sub(" ", _FENCE.sub(" ", markdown))):  # code: examples
            assert (page.parent / path).resolve() == CLAIMS.resolve(), \
                f"{page.relative_to(ROOT)}: the link to {full_id} goes to {path!r}, not the Claims page"
            assert target == anchor(full_id), f"{page.relative_to(ROOT)}: {full_id}'s anchor is {anchor(full_id)}"
            assert any(p.fullmatch(full_id) for p in patterns), \
                f"{page.relative_to(ROOT)} names claim {full_id}, which no notebook registers"
