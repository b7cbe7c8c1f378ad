"""The cache trusts an entry only when it is what its key says."""

import pytest
import torch

from factlens.cache import cached_tensors, tensor_file


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
