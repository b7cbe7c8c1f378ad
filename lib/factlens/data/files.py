"""Where the data files live, how they are fetched, and how a cached copy is checked.

Every file has a path relative to a *data root*, with the same layout as the local copies
described in ``shared/data/README.md`` (``lama/TREx/P19.jsonl``, ``rome/known_1000.json``,
``counterfact/counterfact-train.json``, ``wikitext-2/valid.txt`` ...).

* ``$FACTLENS_DATA_DIR`` set: files are read from that folder, and only from there (nothing
  is downloaded; a file that is not there raises :class:`DataUnavailableError`).
* unset: each file is downloaded once from its canonical URL into
  ``cache_dir()/data/<relative path>`` (LAMA's ``data.zip`` is downloaded once and
  extracted; WikiText comes from the Hugging Face hub's parquet files and is stored as
  text), with :func:`factlens.core.cache.download`: written to a temporary file, checked (it must
  parse), and renamed into place. Its SHA-256 is recorded in a ``<file>.sha256`` sidecar and
  checked on every later read. A cached file without a sidecar or with a different digest is
  deleted and downloaded again, never trusted.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from factlens.core.cache import DownloadError, cache_dir, download, replacing, sha256_file
from factlens.data.reading import MalformedDataError, check_parses

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
#: WikiText configurations on the hub (tokenized, like the local copies) and their shard counts.
WIKITEXT_CONFIGS = {
    "wikitext-2": ("wikitext-2-v1", {"train": 1, "validation": 1, "test": 1}),
    "wikitext-103": ("wikitext-103-v1", {"train": 2, "validation": 1, "test": 1}),
}
_LAMA_MANIFEST = "lama/.data.zip.manifest.json"


class DataUnavailableError(FileNotFoundError):
    """A data file is neither under ``$FACTLENS_DATA_DIR`` nor downloadable."""


# --------------------------------------------------------------------------- where files live


def data_root() -> Path | None:
    """``Path($FACTLENS_DATA_DIR)`` when the variable is set (and not empty), else ``None``
    (files are then downloaded into ``cache_dir()/data``)."""
    value = os.environ.get(ENV_VAR, "").strip()
    return Path(value).expanduser() if value else None


def _cache_root() -> Path:
    return cache_dir("data")


@dataclass(frozen=True)
class Source:
    """Where a relative path comes from: ``kind`` is "file", "lama-zip" or "parquet"."""

    kind: str
    urls: tuple[str, ...]

    @property
    def url(self) -> str:
        return self.urls[0]


def source(rel: str) -> Source | None:
    """The canonical source of the file at ``rel`` (relative to the data root), if it has one."""
    parts = rel.split("/")
    if rel == "lama/common_vocab_cased.txt":
        return Source("file", (LAMA_VOCAB_URL,))
    if parts[0] == "lama":
        return Source("lama-zip", (LAMA_ZIP_URL,))
    if parts[0] == "pararel" and len(parts) == 3 and parts[1] == "patterns":
        return Source("file", (PARAREL_URL.format(relation=parts[2].removesuffix(".jsonl")),))
    if rel in ("rome/known_1000.json", "counterfact/counterfact.json", "zsre/zsre_mem_eval.json"):
        return Source("file", (ROME_URL.format(name=parts[-1]),))
    if parts[0] in WIKITEXT_CONFIGS and len(parts) == 2 and parts[1].endswith(".txt"):
        config, shards = WIKITEXT_CONFIGS[parts[0]]
        split = {"valid": "validation"}.get(parts[1][:-4], parts[1][:-4])
        if split in shards:
            n = shards[split]
            urls = tuple(WIKITEXT_URL.format(config=config, split=split, shard=i, shards=n) for i in range(n))
            return Source("parquet", urls)
    return None


def unavailable(rel: str, src: Source | None, why: str) -> DataUnavailableError:
    """The error for a file that cannot be had: names the variable, the path and the URL."""
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
    src = source(rel)
    root = data_root()
    if root is not None:
        path = root / rel
        if path.is_file():
            return path
        if missing_ok:
            return None
        raise unavailable(rel, src, "no such file")

    path = _cache_root() / rel
    if path.is_file() and _trusted(path):
        return path
    if src is None:
        raise unavailable(rel, src, "it has no canonical URL to download it from")
    if src.kind == "lama-zip" and not path.exists():
        listed = _lama_members()
        if listed is not None and rel not in listed:  # the archive is here and has no such member
            if missing_ok:
                return None
            raise unavailable(rel, src, f"{LAMA_ZIP_URL} has no such member")
    {"file": _download_file, "lama-zip": _download_lama, "parquet": _download_parquet}[src.kind](rel, src)
    if path.is_file():
        return path
    if missing_ok:
        return None
    raise unavailable(rel, src, f"{src.url} has no such member")


def require(rel: str) -> Path:
    """:func:`data_file` for a file that must exist."""
    path = data_file(rel)
    assert path is not None
    return path


# --------------------------------------------------------------------------- checksums


_verified: dict[Path, tuple[int, int]] = {}


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _record_digest(path: Path, digest: str | None = None) -> None:
    """Write ``<path>.sha256`` atomically (after the file itself is in place)."""
    with replacing(_sidecar(path)) as tmp:
        tmp.write_text(f"{digest or sha256_file(path)}  {path.name}\n")


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


def _fetch(url: str, dest: Path, rel: str, src: Source, check: Callable[[Path], object] | None = None) -> str:
    """:func:`factlens.core.cache.download`, with a failed transfer raised as :class:`DataUnavailableError`."""
    print(f"factlens: downloading {url}", file=sys.stderr)
    try:
        return download(url, dest, check=check)
    except DownloadError as err:
        raise unavailable(rel, src, f"the download failed: {err}") from err


def _install(path: Path, origin: str, write: Callable[[Path], object]) -> None:
    """Put a file at ``path`` that ``write(temporary path)`` makes, if it parses, and record its digest."""
    with replacing(path) as tmp:
        write(tmp)
        check_parses(tmp, path.name, origin)
    _record_digest(path)


def _download_file(rel: str, src: Source) -> None:
    path = _cache_root() / rel
    origin = f"{src.url} (downloaded for {rel})"
    digest = _fetch(src.url, path, rel, src, check=lambda tmp: check_parses(tmp, path.name, origin))
    _record_digest(path, digest)


def _lama_members() -> set[str] | None:
    """The relative paths that LAMA's extracted ``data.zip`` provided, if it was extracted."""
    try:
        return set(json.loads((_cache_root() / _LAMA_MANIFEST).read_text()))
    except (OSError, ValueError):
        return None


def _extract_lama(archive: Path, url: str) -> list[str]:
    """Extract the ``data/`` folder of LAMA's ``data.zip`` into ``<cache>/lama/``; the members' paths."""
    try:
        with zipfile.ZipFile(archive) as zf:
            bad = zf.testzip()
            if bad is not None:
                raise MalformedDataError(f"{url}: member {bad} is corrupt")
            names = [n for n in zf.namelist() if not n.endswith("/")]
            prefix = next(
                (n[: -len("relations.jsonl")] for n in names if n.rsplit("/", 1)[-1] == "relations.jsonl"),
                None,
            )
            if prefix is None:
                raise MalformedDataError(f"{url}: the archive has no relations.jsonl")
            members = []
            for name in names:
                if not name.startswith(prefix) or "/." in "/" + name or name.startswith("__MACOSX"):
                    continue
                member_rel = "lama/" + name[len(prefix) :]
                _install(_cache_root() / member_rel, f"{url} member {name}",
                         lambda tmp, name=name: tmp.write_bytes(zf.read(name)))
                members.append(member_rel)
    except zipfile.BadZipFile as err:
        raise MalformedDataError(f"{url}: not a zip archive ({err})") from None
    return members


def _download_lama(rel: str, src: Source) -> None:
    """Download LAMA's ``data.zip``, extract its ``data/`` folder, and list what it held."""
    archive = _cache_root() / "lama" / "data.zip"
    try:
        _fetch(src.url, archive, rel, src)
        members = _extract_lama(archive, src.url)
    finally:
        archive.unlink(missing_ok=True)
    with replacing(_cache_root() / _LAMA_MANIFEST) as tmp:
        tmp.write_text(json.dumps(sorted(members), indent=0))


def _download_parquet(rel: str, src: Source) -> None:
    """Download the hub's parquet shards of a WikiText split and store their lines as text."""
    import pyarrow.parquet as pq

    path = _cache_root() / rel
    texts: list[str] = []
    for url in src.urls:
        shard = path.with_name(url.rsplit("/", 1)[-1])
        try:
            _fetch(url, shard, rel, src)
            try:
                texts.extend(t or "" for t in pq.read_table(shard, columns=["text"]).column("text").to_pylist())
            except Exception as err:  # pyarrow raises several kinds of errors for a bad file
                raise MalformedDataError(f"{url}: not a parquet file with a 'text' column ({err})") from None
        finally:
            shard.unlink(missing_ok=True)
    lines = "".join(t if t.endswith("\n") else t + "\n" for t in texts)
    _install(path, f"{src.urls[0]} (converted to {rel})", lambda tmp: tmp.write_text(lines, encoding="utf-8"))
