"""The cache trusts an entry only when it is what its key says; files get into place whole or not at all."""

import hashlib
import io
import urllib.error
import urllib.request

import pytest
import torch

from factlens.core.cache import DownloadError, cached_tensors, download, replacing, tensor_file


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FACTLENS_CACHE_DIR", str(tmp_path))


def test_built_once_then_read_back():
    calls = []

    def build():
        calls.append(1)
        return {"c": torch.arange(6.0).reshape(2, 3)}

    key = {"model": "tiny", "layer": 1, "samples": 10}
    first = cached_tensors("stats", key, build)
    second = cached_tensors("stats", key, build)
    assert calls == [1]
    assert torch.equal(first["c"], second["c"])
    cached_tensors("stats", {**key, "samples": 20}, build)  # another key is another entry
    assert calls == [1, 1]


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_entry_is_rebuilt_with_a_warning(damage):
    key = {"what": "x"}
    cached_tensors("stats", key, lambda: {"x": torch.ones(100)})
    path = tensor_file("stats", key)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(data[:-8] + bytes(b ^ 0xFF for b in data[-8:]))
    with pytest.warns(UserWarning, match="not trusted"):
        again = cached_tensors("stats", key, lambda: {"x": torch.full((100,), 2.0)})
    assert torch.equal(again["x"], torch.full((100,), 2.0))


# --------------------------------------------------------------------------- files into place, downloads


def test_replacing_renames_on_success_and_leaves_the_old_file_on_failure(tmp_path):
    dest = tmp_path / "sub" / "f.txt"
    with replacing(dest) as tmp:
        assert tmp.parent == dest.parent and tmp.name.endswith(".partial") and not dest.exists()
        tmp.write_text("new")
    assert dest.read_text() == "new"
    with pytest.raises(RuntimeError, match="boom"), replacing(dest) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert dest.read_text() == "new" and sorted(p.name for p in dest.parent.iterdir()) == ["f.txt"]


class _Response(io.BytesIO):
    def __init__(self, body: bytes, length: int):
        super().__init__(body)
        self.headers = {"Content-Length": str(length)}


@pytest.fixture
def served(monkeypatch):
    """``{url: (body, Content-Length)}`` served in place of ``urllib.request.urlopen``."""
    files: dict[str, tuple[bytes, int]] = {}

    def urlopen(url, timeout=None):
        if url not in files:
            raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
        return _Response(*files[url])

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return files


def test_download_checks_length_digest_and_contents(tmp_path, served):
    url, body = "https://example.org/a.json", b'{"a": 1}'
    dest = tmp_path / "a.json"
    served[url] = (body, len(body))
    assert download(url, dest, sha256=hashlib.sha256(body).hexdigest()) == hashlib.sha256(body).hexdigest()
    assert dest.read_bytes() == body

    def listing():
        return sorted(p.name for p in tmp_path.iterdir())

    served[url] = (b'{"a": 2}', 8)
    with pytest.raises(DownloadError, match=r"SHA-256 [0-9a-f]{64} is not the pinned [0-9a-f]{64}"):
        download(url, dest, sha256=hashlib.sha256(body).hexdigest())
    assert dest.read_bytes() == body and listing() == ["a.json"]  # the old file stays, nothing half-written

    def reject(path):
        assert path != dest and path.read_bytes() == b'{"a": 2}'  # checked before it is renamed into place
        raise ValueError("not what we wanted")

    with pytest.raises(ValueError, match="not what we wanted"):
        download(url, dest, check=reject)
    assert dest.read_bytes() == body and listing() == ["a.json"]

    served[url] = (b'{"a', 8)
    with pytest.raises(DownloadError, match="the download was cut short: 3 of 8 bytes"):
        download(url, dest)
    with pytest.raises(DownloadError, match="name resolution") as err:
        download("https://example.org/gone", tmp_path / "gone")
    assert isinstance(err.value, OSError) and listing() == ["a.json"]
