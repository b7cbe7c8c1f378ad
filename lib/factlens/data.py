"""The data sets of the three papers, as plain frozen records.

* LAMA (Petroni et al. 2019): :func:`lama` (T-REx, Google-RE, SQuAD, ConceptNet),
  :func:`lama_relations`, :func:`lama_vocab`; ParaRel paraphrases: :func:`pararel_patterns`.
* ROME (Meng et al. 2022): :func:`known_facts`, :func:`counterfact`, :func:`zsre`.
* A text corpus for Geva et al. 2021's trigger examples: :func:`corpus` (WikiText).

Where the files come from
-------------------------
Every file has a path relative to a *data root*, with the same layout as the local copies
described in ``shared/data/README.md`` (``lama/TREx/P19.jsonl``, ``rome/known_1000.json``,
``counterfact/counterfact-train.json``, ``wikitext-2/valid.txt`` ...).

* ``$FACTLENS_DATA_DIR`` set: files are read from that folder, and only from there (nothing
  is downloaded; a file that is not there raises :class:`DataUnavailableError`).
* unset: each file is downloaded once from its canonical URL into
  ``cache_dir()/data/<relative path>`` (LAMA's ``data.zip`` is downloaded once and
  extracted; WikiText comes from the Hugging Face hub's parquet files and is stored as
  text). A download is written to a temporary file, checked (it must parse), and renamed
  into place; its SHA-256 is recorded in a ``<file>.sha256`` sidecar and checked on every
  later read. A cached file without a sidecar or with a different digest is deleted and
  downloaded again, never trusted.

Records
-------
All loaders return frozen dataclasses (:class:`LamaFact`, :class:`Relation`,
:class:`KnownFact`, :class:`CounterFactCase`, :class:`ZsreCase`). Templates use LAMA's
``[X]``/``[Y]`` slots for LAMA and ParaRel, and Python's ``{}`` (the subject) for ROME's
data sets, as the papers do.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from factlens.cache import cache_dir, sha256_file

__all__ = [
    "ENV_VAR",
    "LAMA_CORPORA",
    "PARAREL_RELATIONS",
    "CounterFactCase",
    "DataUnavailableError",
    "KnownFact",
    "LamaFact",
    "MalformedDataError",
    "Relation",
    "ZsreCase",
    "corpus",
    "counterfact",
    "data_file",
    "data_root",
    "known_facts",
    "lama",
    "lama_relations",
    "lama_vocab",
    "pararel_patterns",
    "zsre",
]

ENV_VAR = "FACTLENS_DATA_DIR"

LAMA_ZIP_URL = "https://dl.fbaipublicfiles.com/LAMA/data.zip"
# LAMA's common vocabulary is built by a script in LAMA's repository; OptiPrompt publishes the file.
LAMA_VOCAB_URL = (
    "https://raw.githubusercontent.com/princeton-nlp/OptiPrompt/"
    "9450bc96f28ac3df01337c79be079a2ac3defb5c/common_vocabs/common_vocab_cased.txt"
)
ROME_URL = "https://rome.baulab.info/data/dsets/{name}"
PARAREL_URL = (
    "https://raw.githubusercontent.com/yanaiela/pararel/"
    "cb5554678457beb5ac163d888f1ce8cf174b3f0b/data/pattern_data/graphs_json/{relation}.jsonl"
)
WIKITEXT_URL = (
    "https://huggingface.co/datasets/Salesforce/wikitext/resolve/main/"
    "{config}/{split}-{shard:05d}-of-{shards:05d}.parquet"
)

LAMA_CORPORA = ("TREx", "Google_RE", "Squad", "ConceptNet")

#: LAMA's Google-RE templates (LAMA's ``scripts/run_experiments.py``); the jsonl files hold none.
GOOGLE_RE_TEMPLATES = {
    "place_of_birth": "[X] was born in [Y] .",
    "date_of_birth": "[X] (born [Y]).",
    "place_of_death": "[X] died in [Y] .",
}

#: The 39 T-REx relations that ParaRel has paraphrase patterns for.
PARAREL_RELATIONS = (
    "P1001", "P101", "P103", "P106", "P108", "P127", "P1303", "P131", "P136", "P1376",
    "P138", "P140", "P1412", "P159", "P17", "P176", "P178", "P19", "P190", "P20",
    "P264", "P27", "P276", "P279", "P30", "P36", "P361", "P364", "P37", "P39",
    "P407", "P413", "P449", "P463", "P47", "P495", "P530", "P740", "P937",
)  # fmt: skip

#: WikiText configurations on the hub (tokenized, like the local copies) and their shard counts.
_WIKITEXT = {
    "wikitext-2": ("wikitext-2-v1", {"train": 1, "validation": 1, "test": 1}),
    "wikitext-103": ("wikitext-103-v1", {"train": 2, "validation": 1, "test": 1}),
}
_SPLITS = {"valid": "valid", "validation": "valid", "test": "test", "train": "train"}

_LAMA_MANIFEST = "lama/.data.zip.manifest.json"


# --------------------------------------------------------------------------- errors


class DataUnavailableError(FileNotFoundError):
    """A data file is neither under ``$FACTLENS_DATA_DIR`` nor downloadable."""


class MalformedDataError(ValueError):
    """A data file does not hold what it should (bad JSON, a missing field); names file and line."""


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class LamaFact:
    """One LAMA probe.

    ``template`` has ``[X]`` (the subject) and ``[Y]`` (the object). For SQuAD and ConceptNet,
    which have no relation templates, the template is the masked sentence itself with
    ``[MASK]`` written as ``[Y]`` and no ``[X]``. ``evidences`` are the corpus sentences with
    the object masked (``[MASK]``), empty where the file has none.
    """

    subject: str
    relation: str
    object: str
    template: str
    uuid: str
    corpus: str
    evidences: tuple[str, ...] = ()

    def cloze(self, mask: str = "[MASK]") -> str:
        """The probe sentence: the template with the subject filled in and the object masked."""
        return self.template.replace("[X]", self.subject).replace("[Y]", mask)


@dataclass(frozen=True)
class Relation:
    """A LAMA relation: Wikidata id (or Google-RE name), label, template and cardinality type."""

    id: str
    label: str
    template: str
    type: str  # "1-1", "N-1" or "N-M"
    description: str = ""
    corpus: str = "TREx"


@dataclass(frozen=True)
class KnownFact:
    """One of ROME's 1,209 known facts (``known_1000.json``); ``template`` has ``{}`` for the subject.

    ``prompt`` is the file's prompt: the filled template, sometimes followed by the first
    words the model generated (``template.format(subject)`` is always a prefix of it).
    """

    known_id: int
    subject: str
    attribute: str
    template: str
    prediction: str
    prompt: str
    relation_id: str


@dataclass(frozen=True)
class CounterFactCase:
    """One CounterFact case, from ROME's original format or the reduced MEND/EasyEdit one.

    ``prompt`` is a template with ``{}`` for the subject. ``neighborhood_prompts`` are
    ``(prompt, true object)`` pairs. The reduced format has one paraphrase, one neighborhood
    prompt, no generation or attribute prompts and no relation id (``None``).
    """

    case_id: int
    prompt: str
    subject: str
    target_new: str
    target_true: str
    paraphrase_prompts: tuple[str, ...]
    neighborhood_prompts: tuple[tuple[str, str], ...]
    generation_prompts: tuple[str, ...] = ()
    relation_id: str | None = None
    attribute_prompts: tuple[str, ...] = ()

    @property
    def filled_prompt(self) -> str:
        """The rewrite prompt with the subject filled in."""
        return self.prompt.format(self.subject)


@dataclass(frozen=True)
class ZsreCase:
    """One zsRE edit (ROME's format): a question about ``subject``, its rephrasing, the new
    answer to edit in (``target_new``, the file's ``alt``), the true ``answers``, and an
    unrelated neighbourhood question ``loc`` with its answer ``loc_ans``."""

    case_id: int
    subject: str
    src: str
    rephrase: str
    target_new: str
    answers: tuple[str, ...]
    loc: str
    loc_ans: str

    @property
    def answer(self) -> str:
        """The first true answer."""
        return self.answers[0] if self.answers else ""


# --------------------------------------------------------------------------- where files live


def data_root() -> Path | None:
    """``Path($FACTLENS_DATA_DIR)`` when the variable is set (and not empty), else ``None``
    (files are then downloaded into ``cache_dir()/data``)."""
    value = os.environ.get(ENV_VAR, "").strip()
    return Path(value).expanduser() if value else None


def _cache_root() -> Path:
    return cache_dir("data")


@dataclass(frozen=True)
class _Source:
    """Where a relative path comes from: ``kind`` is "file", "lama-zip" or "parquet"."""

    kind: str
    urls: tuple[str, ...]

    @property
    def url(self) -> str:
        return self.urls[0]


def _source(rel: str) -> _Source | None:
    """The canonical source of the file at ``rel`` (relative to the data root), if it has one."""
    parts = rel.split("/")
    if rel == "lama/common_vocab_cased.txt":
        return _Source("file", (LAMA_VOCAB_URL,))
    if parts[0] == "lama":
        return _Source("lama-zip", (LAMA_ZIP_URL,))
    if parts[0] == "pararel" and len(parts) == 3 and parts[1] == "patterns":
        return _Source("file", (PARAREL_URL.format(relation=parts[2].removesuffix(".jsonl")),))
    if rel in ("rome/known_1000.json", "counterfact/counterfact.json", "zsre/zsre_mem_eval.json"):
        return _Source("file", (ROME_URL.format(name=parts[-1]),))
    if parts[0] in _WIKITEXT and len(parts) == 2 and parts[1].endswith(".txt"):
        config, shards = _WIKITEXT[parts[0]]
        split = {"valid": "validation"}.get(parts[1][:-4], parts[1][:-4])
        if split in shards:
            n = shards[split]
            urls = tuple(WIKITEXT_URL.format(config=config, split=split, shard=i, shards=n) for i in range(n))
            return _Source("parquet", urls)
    return None


def _unavailable(rel: str, src: _Source | None, why: str) -> DataUnavailableError:
    url = src.url if src else "(no canonical URL: only local copies of this file exist)"
    root = data_root()
    if root is not None:
        return DataUnavailableError(
            f"{rel} is not available: it is not under {ENV_VAR}={root} ({why}). "
            f"Put the file there (canonical source: {url}), or unset {ENV_VAR} "
            "to download it into the cache."
        )
    return DataUnavailableError(
        f"{rel} is not available: {ENV_VAR} is not set and {why} (URL: {url}). "
        f"Connect to the internet, or set {ENV_VAR} to a folder that holds {rel}."
    )


def data_file(rel: str, *, missing_ok: bool = False) -> Path | None:
    """The local path of the data file ``rel`` (e.g. ``"lama/TREx/P19.jsonl"``), downloading it
    into the cache first when ``$FACTLENS_DATA_DIR`` is unset and it is not cached yet.

    With ``missing_ok``, a file that its source simply does not have (a T-REx relation that
    LAMA has no facts for) gives ``None`` instead of :class:`DataUnavailableError`.
    """
    src = _source(rel)
    root = data_root()
    if root is not None:
        path = root / rel
        if path.is_file():
            return path
        if missing_ok:
            return None
        raise _unavailable(rel, src, "no such file")

    path = _cache_root() / rel
    if path.is_file() and _trusted(path):
        return path
    if src is None:
        raise _unavailable(rel, src, "it has no canonical URL to download it from")
    if src.kind == "lama-zip" and not path.exists():
        listed = _lama_members()
        if listed is not None and rel not in listed:  # the archive is here and has no such member
            if missing_ok:
                return None
            raise _unavailable(rel, src, f"{LAMA_ZIP_URL} has no such member")
    {"file": _download_file, "lama-zip": _download_lama, "parquet": _download_parquet}[src.kind](rel, src)
    if path.is_file():
        return path
    if missing_ok:
        return None
    raise _unavailable(rel, src, f"{src.url} has no such member")


def _require(rel: str) -> Path:
    path = data_file(rel)
    assert path is not None
    return path


# --------------------------------------------------------------------------- checksums


_verified: dict[Path, tuple[int, int]] = {}


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _record_digest(path: Path) -> None:
    """Write ``<path>.sha256`` atomically (after the file itself is in place)."""
    side = _sidecar(path)
    tmp = side.with_name(f".{side.name}.{os.getpid()}.tmp")
    tmp.write_text(f"{sha256_file(path)}  {path.name}\n")
    os.replace(tmp, side)


def _trusted(path: Path) -> bool:
    """True when the cached ``path`` matches the digest recorded when it was downloaded.

    A file that does not (or has no sidecar: a download cut short before it was recorded)
    is deleted with a warning, so that the caller downloads it again.
    """
    stat = path.stat()
    if _verified.get(path) == (stat.st_size, stat.st_mtime_ns):
        return True
    side = _sidecar(path)
    try:
        expected = side.read_text().split()[0]
    except (OSError, IndexError):
        reason = "it has no recorded SHA-256"
    else:
        if sha256_file(path) == expected:
            _verified[path] = (stat.st_size, stat.st_mtime_ns)
            return True
        reason = "its SHA-256 differs from the one recorded when it was downloaded"
    warnings.warn(f"cached data file {path} is not trusted because {reason}; downloading it again", stacklevel=3)
    path.unlink(missing_ok=True)
    side.unlink(missing_ok=True)
    _verified.pop(path, None)
    return False


# --------------------------------------------------------------------------- downloads


def _fetch(url: str, dest: Path, rel: str, src: _Source) -> None:
    """Download ``url`` into ``dest`` (a temporary file); a failure or a short read raises
    :class:`DataUnavailableError` and leaves nothing behind."""
    print(f"factlens: downloading {url}", file=sys.stderr)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, dest.open("wb") as out:
            shutil.copyfileobj(response, out, 1 << 20)
            expected = response.headers.get("Content-Length") if response.headers else None
        size = dest.stat().st_size
        if expected is not None and int(expected) != size:
            raise OSError(f"the download was cut short: {size} of {expected} bytes")
    except (OSError, http.client.HTTPException, ValueError) as err:
        dest.unlink(missing_ok=True)
        raise _unavailable(rel, src, f"the download failed: {err}") from err


def _temp_near(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    return Path(name)


def _check_parses(path: Path, name: str, origin: str) -> None:
    """Raise :class:`MalformedDataError` (naming ``origin`` and the line) unless ``path``,
    a file called ``name``, parses as what its suffix says."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise MalformedDataError(f"{origin}: not UTF-8 text ({err})") from None
    if name.endswith(".jsonl"):
        for lineno, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    json.loads(line)
                except json.JSONDecodeError as err:
                    raise MalformedDataError(f"{origin}, line {lineno}: not valid JSON ({err.msg})") from None
    elif name.endswith(".json"):
        try:
            json.loads(text)
        except json.JSONDecodeError as err:
            raise MalformedDataError(f"{origin}, line {err.lineno}: not valid JSON ({err.msg})") from None
    elif not text.strip():
        raise MalformedDataError(f"{origin}, line 1: the file is empty")


def _install(tmp: Path, path: Path, origin: str) -> None:
    """Check ``tmp`` parses, move it to ``path`` and record its digest; delete it if it does not parse."""
    try:
        _check_parses(tmp, path.name, origin)
    except MalformedDataError:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    _record_digest(path)


def _download_file(rel: str, src: _Source) -> None:
    path = _cache_root() / rel
    tmp = _temp_near(path)
    _fetch(src.url, tmp, rel, src)
    _install(tmp, path, f"{src.url} (downloaded for {rel})")


def _lama_members() -> set[str] | None:
    """The relative paths that LAMA's extracted ``data.zip`` provided, if it was extracted."""
    try:
        return set(json.loads((_cache_root() / _LAMA_MANIFEST).read_text()))
    except (OSError, ValueError):
        return None


def _download_lama(rel: str, src: _Source) -> None:
    """Download LAMA's ``data.zip`` and extract its ``data/`` folder into ``<cache>/lama/``."""
    lama_dir = _cache_root() / "lama"
    archive = _temp_near(lama_dir / "data.zip")
    try:
        _fetch(src.url, archive, rel, src)
        try:
            with zipfile.ZipFile(archive) as zf:
                bad = zf.testzip()
                if bad is not None:
                    raise MalformedDataError(f"{src.url}: member {bad} is corrupt")
                names = [n for n in zf.namelist() if not n.endswith("/")]
                prefix = next(
                    (n[: -len("relations.jsonl")] for n in names if n.rsplit("/", 1)[-1] == "relations.jsonl"),
                    None,
                )
                if prefix is None:
                    raise MalformedDataError(f"{src.url}: the archive has no relations.jsonl")
                members = []
                for name in names:
                    if not name.startswith(prefix) or "/." in "/" + name or name.startswith("__MACOSX"):
                        continue
                    member_rel = "lama/" + name[len(prefix) :]
                    path = _cache_root() / member_rel
                    tmp = _temp_near(path)
                    with zf.open(name) as fin, tmp.open("wb") as fout:
                        shutil.copyfileobj(fin, fout, 1 << 20)
                    _install(tmp, path, f"{src.url} member {name}")
                    members.append(member_rel)
        except zipfile.BadZipFile as err:
            raise MalformedDataError(f"{src.url}: not a zip archive ({err})") from None
    finally:
        archive.unlink(missing_ok=True)
    manifest = _cache_root() / _LAMA_MANIFEST
    tmp = _temp_near(manifest)
    tmp.write_text(json.dumps(sorted(members), indent=0))
    os.replace(tmp, manifest)


def _download_parquet(rel: str, src: _Source) -> None:
    """Download the hub's parquet shards of a WikiText split and store their lines as text."""
    import pyarrow.parquet as pq

    path = _cache_root() / rel
    texts: list[str] = []
    for url in src.urls:
        tmp = _temp_near(path.with_suffix(".parquet"))
        try:
            _fetch(url, tmp, rel, src)
            try:
                texts.extend(t or "" for t in pq.read_table(tmp, columns=["text"]).column("text").to_pylist())
            except Exception as err:  # pyarrow raises several kinds of errors for a bad file
                raise MalformedDataError(f"{url}: not a parquet file with a 'text' column ({err})") from None
        finally:
            tmp.unlink(missing_ok=True)
    out = _temp_near(path)
    out.write_text("".join(t if t.endswith("\n") else t + "\n" for t in texts), encoding="utf-8")
    _install(out, path, f"{src.urls[0]} (converted to {rel})")


# --------------------------------------------------------------------------- reading


def _jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, record)`` for each non-empty line of a JSON-lines file."""
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise MalformedDataError(f"{path}, line {lineno}: not valid JSON ({err.msg})") from None
            if not isinstance(record, dict):
                raise MalformedDataError(f"{path}, line {lineno}: expected a JSON object")
            yield lineno, record


def _json_records(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, record)`` for each object of a file holding one JSON array of objects."""
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise MalformedDataError(f"{path}, line {err.lineno}: not valid JSON ({err.msg})") from None
    if not isinstance(data, list):
        raise MalformedDataError(f"{path}, line 1: expected a JSON array of records")
    # find where each record starts, to name its line in errors
    decoder, out, pos, line, counted = json.JSONDecoder(), [], text.index("[") + 1, 1, 0
    for record in data:
        while text[pos] in " \t\r\n,":
            pos += 1
        line += text.count("\n", counted, pos)
        counted = pos
        if not isinstance(record, dict):
            raise MalformedDataError(f"{path}, line {line}: expected a JSON object")
        out.append((line, record))
        _, pos = decoder.raw_decode(text, pos)
    return out


def _get(record: dict[str, Any], key: str, path: Path, line: int, kind: type | tuple[type, ...] = str) -> Any:
    """``record[key]``, which must exist and have type ``kind``; otherwise a MalformedDataError."""
    if key not in record:
        raise MalformedDataError(f"{path}, line {line}: missing field {key!r}")
    value = record[key]
    if not isinstance(value, kind):
        raise MalformedDataError(f"{path}, line {line}: field {key!r} is {type(value).__name__}, not {kind}")
    return value


def _strings(record: dict[str, Any], key: str, path: Path, line: int) -> tuple[str, ...]:
    values = _get(record, key, path, line, list)
    if not all(isinstance(v, str) for v in values):
        raise MalformedDataError(f"{path}, line {line}: field {key!r} must be a list of strings")
    return tuple(values)


# --------------------------------------------------------------------------- LAMA


def _corpus_name(name: str) -> str:
    names = {c.lower().replace("_", "").replace("-", ""): c for c in LAMA_CORPORA}
    try:
        return names[name.lower().replace("_", "").replace("-", "")]
    except KeyError:
        raise ValueError(f"unknown LAMA corpus {name!r}; valid names: {', '.join(LAMA_CORPORA)}") from None


def lama_relations() -> dict[str, Relation]:
    """LAMA's relations by id: the 46 T-REx relations of ``relations.jsonl`` (in file order;
    5 of them have no facts), then Google-RE's three (``place_of_birth``, ``date_of_birth``,
    ``place_of_death``, type N-1, with LAMA's templates)."""
    path = _require("lama/relations.jsonl")
    relations: dict[str, Relation] = {}
    for line, rec in _jsonl(path):
        rel = Relation(
            id=_get(rec, "relation", path, line),
            label=_get(rec, "label", path, line),
            template=_get(rec, "template", path, line),
            type=_get(rec, "type", path, line),
            description=rec.get("description") or "",
            corpus="TREx",
        )
        if rel.type not in ("1-1", "N-1", "N-M"):
            raise MalformedDataError(f"{path}, line {line}: unknown relation type {rel.type!r}")
        relations[rel.id] = rel
    for rid, template in GOOGLE_RE_TEMPLATES.items():
        relations[rid] = Relation(rid, rid.replace("_", " "), template, "N-1", "", "Google_RE")
    return relations


def _masked(record: dict[str, Any], path: Path, line: int) -> tuple[str, ...]:
    return _strings(record, "masked_sentences", path, line) if "masked_sentences" in record else ()


def lama(corpus: str = "TREx", relation: str | None = None) -> list[LamaFact]:
    """The facts of one LAMA corpus: ``"TREx"``, ``"Google_RE"``, ``"Squad"`` or ``"ConceptNet"``.

    * T-REx: one file per relation (``lama/TREx/<id>.jsonl``); relations of ``relations.jsonl``
      with no file are skipped, as LAMA does. ``template`` is the relation's template;
      ``evidences`` are the masked Wikipedia sentences (empty for relations from ParaRel).
    * Google-RE: ``lama/Google_RE/<relation>_test.jsonl`` with LAMA's three templates;
      ``evidences`` are the records' ``masked_sentences``.
    * SQuAD and ConceptNet (``<corpus>/test.jsonl``): no relation templates; the cloze is the
      masked sentence, so ``template`` is that sentence with ``[MASK]`` written ``[Y]`` (every
      ``[MASK]``: three SQuAD sentences mask the object twice) and has no ``[X]``. SQuAD's
      ``subject`` is empty (the file's ``sub_label`` is the placeholder ``"Squad"``), its
      ``relation`` is ``"Squad"``; ConceptNet's relation is the record's ``pred``.

    ``relation`` keeps only the facts of that relation.
    """
    name = _corpus_name(corpus)
    facts: list[LamaFact] = []
    if name == "TREx":
        relations = [r for r in lama_relations().values() if r.corpus == "TREx"]
        if relation is not None:
            relations = [r for r in relations if r.id == relation]
        for rel in relations:
            path = data_file(f"lama/TREx/{rel.id}.jsonl", missing_ok=True)
            if path is None:
                continue
            for line, rec in _jsonl(path):
                evidences = _get(rec, "evidences", path, line, list) if "evidences" in rec else []
                facts.append(
                    LamaFact(
                        subject=_get(rec, "sub_label", path, line),
                        relation=rec.get("predicate_id") or rel.id,
                        object=_get(rec, "obj_label", path, line),
                        template=rel.template,
                        uuid=_get(rec, "uuid", path, line),
                        corpus=name,
                        evidences=tuple(
                            e["masked_sentence"] for e in evidences if isinstance(e, dict) and "masked_sentence" in e
                        ),
                    )
                )
        if not facts and relation is None:
            raise _unavailable("lama/TREx/", _source("lama/TREx/"), "it holds no relation files")
        return facts
    if name == "Google_RE":
        for rid, template in GOOGLE_RE_TEMPLATES.items():
            if relation is not None and rid != relation:
                continue
            path = _require(f"lama/Google_RE/{rid}_test.jsonl")
            for line, rec in _jsonl(path):
                facts.append(
                    LamaFact(
                        subject=_get(rec, "sub_label", path, line),
                        relation=rid,
                        object=_get(rec, "obj_label", path, line),
                        template=template,
                        uuid=_get(rec, "uuid", path, line),
                        corpus=name,
                        evidences=_masked(rec, path, line),
                    )
                )
        return facts
    path = _require(f"lama/{name}/test.jsonl")
    for line, rec in _jsonl(path):
        sentences = _strings(rec, "masked_sentences", path, line)
        if not sentences or "[MASK]" not in sentences[0]:
            raise MalformedDataError(f"{path}, line {line}: no masked sentence with [MASK]")
        rid = "Squad" if name == "Squad" else _get(rec, "pred", path, line)
        if relation is not None and rid != relation:
            continue
        uuid = rec.get("uuid") or rec.get("id") or f"{name}-{line}"
        facts.append(
            LamaFact(
                subject="" if name == "Squad" else str(rec.get("sub_label") or rec.get("sub") or ""),
                relation=rid,
                object=_get(rec, "obj_label", path, line),
                template=sentences[0].replace("[MASK]", "[Y]"),
                uuid=str(uuid),
                corpus=name,
                evidences=sentences,
            )
        )
    return facts


def lama_vocab() -> list[str]:
    """LAMA's common cased vocabulary (21,018 tokens shared by the models LAMA compares)."""
    path = _require("lama/common_vocab_cased.txt")
    return [t for t in (line.strip() for line in path.read_text(encoding="utf-8").splitlines()) if t]


def pararel_patterns(relation: str) -> list[str]:
    """ParaRel's paraphrase templates (with ``[X]`` and ``[Y]``) for a T-REx relation id."""
    if relation not in PARAREL_RELATIONS:
        raise ValueError(
            f"ParaRel has no patterns for relation {relation!r}; it has: {', '.join(PARAREL_RELATIONS)}"
        )
    path = _require(f"pararel/patterns/{relation}.jsonl")
    return [_get(rec, "pattern", path, line) for line, rec in _jsonl(path)]


# --------------------------------------------------------------------------- ROME


def known_facts() -> list[KnownFact]:
    """ROME's 1,209 known facts (``rome/known_1000.json``), in file order; extra fields are ignored."""
    path = _require("rome/known_1000.json")
    return [
        KnownFact(
            known_id=_get(rec, "known_id", path, line, int),
            subject=_get(rec, "subject", path, line),
            attribute=_get(rec, "attribute", path, line),
            template=_get(rec, "template", path, line),
            prediction=_get(rec, "prediction", path, line),
            prompt=_get(rec, "prompt", path, line),
            relation_id=_get(rec, "relation_id", path, line),
        )
        for line, rec in _json_records(path)
    ]


def _target(record: dict[str, Any], key: str, path: Path, line: int) -> str:
    value = _get(record, key, path, line, dict)
    return _get(value, "str", path, line)


def _counterfact_original(rec: dict[str, Any], path: Path, line: int) -> CounterFactCase:
    rw = _get(rec, "requested_rewrite", path, line, dict)
    prompt, subject = _get(rw, "prompt", path, line), _get(rw, "subject", path, line)
    if "{}" not in prompt:
        raise MalformedDataError(f"{path}, line {line}: requested_rewrite.prompt has no '{{}}' for the subject")
    target_true = _target(rw, "target_true", path, line)
    return CounterFactCase(
        case_id=_get(rec, "case_id", path, line, int),
        prompt=prompt,
        subject=subject,
        target_new=_target(rw, "target_new", path, line),
        target_true=target_true,
        paraphrase_prompts=_strings(rec, "paraphrase_prompts", path, line),
        neighborhood_prompts=tuple((p, target_true) for p in _strings(rec, "neighborhood_prompts", path, line)),
        generation_prompts=_strings(rec, "generation_prompts", path, line) if "generation_prompts" in rec else (),
        relation_id=rw.get("relation_id"),
        attribute_prompts=_strings(rec, "attribute_prompts", path, line) if "attribute_prompts" in rec else (),
    )


def _counterfact_reduced(rec: dict[str, Any], path: Path, line: int) -> CounterFactCase:
    prompt, subject = _get(rec, "prompt", path, line), _get(rec, "subject", path, line)
    if "{}" not in prompt:  # the reduced format fills the subject in: turn it back into a template
        if subject not in prompt:
            raise MalformedDataError(
                f"{path}, line {line}: the prompt {prompt!r} does not contain the subject {subject!r}"
            )
        prompt = prompt.replace(subject, "{}", 1)
    return CounterFactCase(
        case_id=_get(rec, "case_id", path, line, int),
        prompt=prompt,
        subject=subject,
        target_new=_get(rec, "target_new", path, line),
        target_true=_get(rec, "ground_truth", path, line),
        paraphrase_prompts=(_get(rec, "rephrase_prompt", path, line),),
        neighborhood_prompts=(
            (_get(rec, "locality_prompt", path, line), _get(rec, "locality_ground_truth", path, line)),
        ),
        generation_prompts=(),
        relation_id=rec.get("relation_id"),
    )


_REDUCED_FILES = ("counterfact-train.json", "counterfact-edit.json", "counterfact-val.json")


def counterfact(path: str | Path | None = None) -> list[CounterFactCase]:
    """CounterFact cases sorted by ``case_id``, one per case.

    ``path`` may be a file in either format (ROME's ``counterfact.json``, or a reduced
    MEND/EasyEdit file), or a folder of such ``*.json`` files. The format is told per record
    (ROME's records have ``requested_rewrite``). Cases repeated across files are kept once
    (a case_id repeated with different contents is an error).

    Default: the reduced files ``counterfact/counterfact-{train,edit,val}.json`` under
    ``$FACTLENS_DATA_DIR`` when present there, else ``counterfact/counterfact.json``
    (downloaded from ROME's site when ``$FACTLENS_DATA_DIR`` is unset).
    """
    if path is None:
        root = data_root()
        local = [root / "counterfact" / n for n in _REDUCED_FILES] if root is not None else []
        files = [p for p in local if p.is_file()] or [_require("counterfact/counterfact.json")]
    else:
        path = Path(path)
        files = sorted(path.glob("*.json")) if path.is_dir() else [path]
        if not files or not all(f.is_file() for f in files):
            raise FileNotFoundError(f"no CounterFact file at {path}")
    cases: dict[int, CounterFactCase] = {}
    for file in files:
        for line, rec in _json_records(file):
            make = _counterfact_original if "requested_rewrite" in rec else _counterfact_reduced
            case = make(rec, file, line)
            seen = cases.setdefault(case.case_id, case)
            if seen != case:
                raise MalformedDataError(
                    f"{file}, line {line}: case_id {case.case_id} was already read with other contents"
                )
    return [cases[k] for k in sorted(cases)]


def zsre(path: str | Path | None = None) -> list[ZsreCase]:
    """zsRE edit cases in ROME's format (``subject, src, rephrase, alt, answers, loc, loc_ans``).

    ``case_id`` is the record's own when it has one, else its position in the file. Default:
    ``zsre/zsre_mend_train-1k.json`` under ``$FACTLENS_DATA_DIR`` when present there, else
    ``zsre/zsre_mem_eval.json`` (ROME's eval split, downloaded when the variable is unset).
    """
    if path is None:
        root = data_root()
        local = root / "zsre" / "zsre_mend_train-1k.json" if root is not None else None
        file = local if local is not None and local.is_file() else _require("zsre/zsre_mem_eval.json")
    else:
        file = Path(path)
    cases = []
    for i, (line, rec) in enumerate(_json_records(file)):
        answers = _get(rec, "answers", file, line, (list, str))
        cases.append(
            ZsreCase(
                case_id=int(rec.get("case_id", i)),
                subject=_get(rec, "subject", file, line),
                src=_get(rec, "src", file, line),
                rephrase=_get(rec, "rephrase", file, line),
                target_new=_get(rec, "alt", file, line),
                answers=(answers,) if isinstance(answers, str) else tuple(str(a) for a in answers),
                loc=_get(rec, "loc", file, line),
                loc_ans=_get(rec, "loc_ans", file, line),
            )
        )
    return cases


# --------------------------------------------------------------------------- text corpus


def _is_heading(line: str) -> bool:
    return len(line) > 2 and line.startswith("= ") and line.endswith(" =")


def corpus(name: str = "wikitext-2", split: str = "valid") -> Iterator[str]:
    """The paragraphs of a WikiText split, stripped, skipping empty lines and section headings
    (``= Title =``, ``= = Section = =``). The text is the tokenized WikiText (``<unk>``,
    ``@-@``), as in the local copies. ``name``: ``"wikitext-2"`` (alias ``"wikitext"``) or
    ``"wikitext-103"``; ``split``: ``"valid"`` (or ``"validation"``), ``"test"``, ``"train"``.
    """
    name = {"wikitext": "wikitext-2"}.get(name, name)
    if name not in _WIKITEXT:
        raise ValueError(f"unknown corpus {name!r}; valid names: wikitext, {', '.join(_WIKITEXT)}")
    if split not in _SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(_SPLITS)}")
    path = _require(f"{name}/{_SPLITS[split]}.txt")

    def paragraphs() -> Iterator[str]:
        with path.open(encoding="utf-8") as f:
            for line in f:
                text = line.strip()
                if text and not _is_heading(text):
                    yield text

    return paragraphs()
