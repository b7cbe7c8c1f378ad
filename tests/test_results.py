"""A chapter's run: parameters recorded once, results and claims written and read back."""

from __future__ import annotations

import json

import numpy as np
import pytest

from factlens.evidence import results


def notebook_namespace(tmp_path):
    """What a notebook's globals() hold right after its parameters cell and papermill's injection."""
    return {"In": [""], "Out": {}, "get_ipython": print, "_": None, "__name__": "__main__",
            "model_name": "tiny-gpt2", "profile": "smoke", "results_dir": str(tmp_path), "n_cases": 3,
            "sizes": [1, 2], "np": np}


def test_run_records_exactly_the_parameters(tmp_path):
    run = results.Run("chapter", notebook_namespace(tmp_path))
    assert run.parameters == {"model_name": "tiny-gpt2", "profile": "smoke", "results_dir": str(tmp_path),
                              "n_cases": 3, "sizes": [1, 2]}
    with pytest.raises(ValueError, match="right after the parameters cell"):
        results.Run("chapter", {"model_name": "x"})


def test_run_saves_metrics_claims_and_time(tmp_path):
    run = results.Run("chapter", notebook_namespace(tmp_path))
    run.claim("ate", "average total effect", paper="tracing.ate", ours=0.2, ci=(0.17, 0.21), n=100)
    run.claim("ate", "average total effect", paper="tracing.ate", ours=0.19, ci=(0.17, 0.21), n=100,
              reference=0.0)  # a cell run again replaces the claim
    path = run.save({"x": np.float32(1.5), "nan": float("nan")})
    record = json.loads(path.read_text())
    assert record["parameters"]["n_cases"] == 3 and record["metrics"] == {"x": 1.5, "nan": None}
    stored = record["claims"]
    assert [c["id"] for c in stored] == ["ate"] and stored[0]["verdict"] == "reproduced"  # within 0.186 ± 0.03
    assert stored[0]["tau"] == 0.03 and stored[0]["tau_reason"] and stored[0]["n_to_settle"] is None
    assert stored[0]["ours"] == {"value": 0.19, "n": 100, "ci": [0.17, 0.21]} and stored[0]["reference"] == 0.0
    assert record["seconds"] >= 0
    assert results.load_results("chapter", tmp_path)["chapter"] == "chapter"
    assert results.load_results("missing", tmp_path) is None
    claims_path = results.write_claims(tmp_path)
    assert [c["id"] for c in json.loads(claims_path.read_text())] == ["ate"]


def test_a_claim_states_no_tolerance_and_counts_units(tmp_path):
    run = results.Run("chapter", notebook_namespace(tmp_path))
    with pytest.raises(TypeError, match="tolerance"):
        run.claim("ate", "ATE", paper="tracing.ate", ours=0.19, ci=(0.17, 0.21), n=100, tolerance=0.02)
    few = run.claim("ate", "ATE", paper="tracing.ate", ours=0.19, ci=(0.17, 0.21), n=8)  # one edit's 8 rows
    assert few.verdict == "inconclusive" and few.n_to_settle == 20
    wide = run.claim("ate", "ATE", paper="tracing.ate", ours=0.19, ci=(0.1, 0.28), n=100)
    assert wide.verdict == "inconclusive" and wide.n_to_settle > 100
    assert list(run.claims_frame()["n to settle"]) == [str(wide.n_to_settle)]
