"""The cache: everything expensive, keyed by what produced it and checked before it is trusted.

Lives under ``$FACTLENS_CACHE_DIR`` (default ``~/.cache/factlens``). Every file gets into place
the same way: written to a temporary file beside it, then renamed onto it in one step
(:func:`replacing`), so a reader sees the old file or the new one, never half of one;
:func:`download` fetches a file that way, checking its length, digest and contents first.
Two kinds of entries:

* folders (a converted model): built in a temporary sibling, stamped with a manifest of
  file sizes and SHA-256 digests, then renamed into place in one step, so a killed build
  never leaves a folder that later loads half a model;
* tensor files (layer statistics, trigger tables, embedding scales, ROME's ``k*`` and ``v*``,
  MEMIT's ``δ``): one safetensors file per key, whose metadata carries the key and a digest
  of the tensors; a file that does not match is rebuilt with a warning, never used. A result
  computed on a model is keyed by ``View.cache_key`` too (the model's name, the digest of its
  weights as they are, so an edit gives new keys and its undo the old ones, the device, torch).

``$FACTLENS_RECOMPUTE`` names kinds of tensor files (comma-separated) that are computed afresh,
neither read nor written (:func:`recomputed`): benchmarks time the computation, the tests check it.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where tensors are handled: the data loaders and the book need none
    import torch

MANIFEST = "factlens-manifest.json"


def cache_dir(*parts: str) -> Path:
    """``$FACTLENS_CACHE_DIR/<parts...>`` (default ``~/.cache/factlens``), created."""
    root = Path(os.environ.get("FACTLENS_CACHE_DIR") or Path.home() / ".cache" / "factlens")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file, read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


class DownloadError(OSError):
    """A download failed (no connection, an HTTP error, a short read) or is not the pinned file."""


@contextlib.contextmanager
def replacing(dest: Path) -> Iterator[Path]:
    """A temporary file beside ``dest`` (created empty), renamed onto ``dest`` when the body
    succeeds and deleted when it raises (or the process dies: a ``.<name>.*.partial`` file is
    all that can be left, never a half-written ``dest``)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def download(url: str, dest: Path, *, sha256: str | None = None, check: Callable[[Path], object] | None = None,
             timeout: float = 60) -> str:
    """Download ``url`` to ``dest`` through :func:`replacing`; returns the file's SHA-256.

    Before the file is renamed into place: its length must be the server's ``Content-Length``,
    its digest ``sha256`` when one is pinned, and ``check(temporary path)`` must return (it
    raises to reject the file; its exception propagates). A failure of the transfer or of the
    digest raises :class:`DownloadError`; either way nothing is left behind and ``dest`` is untouched.
    """
    import urllib.request

    with replacing(Path(dest)) as tmp:
        digest = hashlib.sha256()
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, tmp.open("wb") as out:
                for block in iter(lambda: response.read(1 << 20), b""):
                    digest.update(block)
                    out.write(block)
                expected = response.headers.get("Content-Length") if response.headers else None
            size = tmp.stat().st_size
            if expected is not None and int(expected) != size:
                raise DownloadError(f"the download was cut short: {size} of {expected} bytes")
        except DownloadError:
            raise
        except (OSError, http.client.HTTPException, ValueError) as err:
            raise DownloadError(str(err)) from err
        if sha256 is not None and digest.hexdigest() != sha256:
            raise DownloadError(f"SHA-256 {digest.hexdigest()} is not the pinned {sha256}")
        if check is not None:
            check(tmp)
    return digest.hexdigest()


def folder_is_complete(folder: Path) -> bool:
    """True when ``folder`` holds exactly the files its manifest lists, with their sizes and digests."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError):
        return False
    for name, (size, digest) in files.items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != size or sha256_file(path) != digest:
            return False
    return True


@contextlib.contextmanager
def atomic_folder(folder: Path, **info: object) -> Iterator[Path]:
    """Build ``folder`` in a temporary sibling; on success stamp a manifest and rename it into place.

    If the body raises (or the process dies) the final folder is untouched: either the old
    complete folder or nothing. ``info`` is stored in the manifest (what produced the folder).
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=folder.parent))
    try:
        yield tmp
        files = {
            p.name: (p.stat().st_size, sha256_file(p)) for p in sorted(tmp.iterdir()) if p.is_file()
        }
        (tmp / MANIFEST).write_text(json.dumps({"info": info, "files": files}, indent=1, default=str))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _key_text(key: dict) -> str:
    return json.dumps(key, sort_keys=True, default=str)


def _tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    import torch

    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def recomputed(kind: str) -> bool:
    """Whether tensor files of ``kind`` are computed afresh, neither read nor written: whether
    ``$FACTLENS_RECOMPUTE`` (comma-separated kinds) names it."""
    return kind in os.environ.get("FACTLENS_RECOMPUTE", "").split(",")


def tensor_file(kind: str, key: dict) -> Path:
    """Where the tensors for ``key`` (a dict of what produced them) are cached."""
    name = hashlib.sha256(_key_text(key).encode()).hexdigest()[:24]
    return cache_dir(kind) / f"{name}.safetensors"


def cached_tensors(
    kind: str, key: dict, build: Callable[[], dict[str, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """Load the tensors cached for ``key``, or ``build()`` and cache them.

    The file is trusted only when its metadata names the same key and its tensors hash to
    the stored digest; anything else (truncated file, wrong key, flipped bytes) is rebuilt.
    The tensors come back on the CPU, contiguous, as ``build`` made them (also when
    :func:`recomputed`).
    """
    from safetensors.torch import load_file, save_file

    if recomputed(kind):
        return {name: t.detach().cpu().contiguous() for name, t in build().items()}
    path = tensor_file(kind, key)
    if path.exists():
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            tensors = load_file(str(path))
            if meta.get("key") == _key_text(key) and meta.get("digest") == _tensor_digest(tensors):
                return tensors
            reason = "its key or digest does not match"
        except Exception as err:  # a corrupt file raises all sorts of errors
            reason = f"it cannot be read ({type(err).__name__}: {err})"
        warnings.warn(f"cache entry {path} is not trusted because {reason}; rebuilding it", stacklevel=2)
        path.unlink(missing_ok=True)
    tensors = {name: t.detach().cpu().contiguous() for name, t in build().items()}
    meta = {"key": _key_text(key), "digest": _tensor_digest(tensors)}
    with replacing(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return tensors
