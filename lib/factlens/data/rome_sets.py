"""ROME's data sets (Meng et al. 2022): the known facts, CounterFact (in both formats) and zsRE."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from factlens.data.files import data_root, require
from factlens.data.reading import MalformedDataError, field, json_records, optional_strings, strings
from factlens.data.records import CounterFactCase, KnownFact, ZsreCase

_REDUCED_FILES = ("counterfact-train.json", "counterfact-edit.json", "counterfact-val.json")


def known_facts() -> list[KnownFact]:
    """ROME's 1,209 known facts (``rome/known_1000.json``), in file order; extra fields are ignored."""
    path = require("rome/known_1000.json")
    return [
        KnownFact(
            known_id=field(rec, "known_id", path, line, int),
            subject=field(rec, "subject", path, line),
            attribute=field(rec, "attribute", path, line),
            template=field(rec, "template", path, line),
            prediction=field(rec, "prediction", path, line),
            prompt=field(rec, "prompt", path, line),
            relation_id=field(rec, "relation_id", path, line),
        )
        for line, rec in json_records(path)
    ]


def _target(record: dict[str, Any], key: str, path: Path, line: int) -> str:
    value = field(record, key, path, line, dict)
    return field(value, "str", path, line)


def _counterfact_original(rec: dict[str, Any], path: Path, line: int) -> CounterFactCase:
    rw = field(rec, "requested_rewrite", path, line, dict)
    prompt, subject = field(rw, "prompt", path, line), field(rw, "subject", path, line)
    if "{}" not in prompt:
        raise MalformedDataError(f"{path}, line {line}: requested_rewrite.prompt has no '{{}}' for the subject")
    target_true = _target(rw, "target_true", path, line)
    return CounterFactCase(
        case_id=field(rec, "case_id", path, line, int),
        prompt=prompt,
        subject=subject,
        target_new=_target(rw, "target_new", path, line),
        target_true=target_true,
        paraphrase_prompts=strings(rec, "paraphrase_prompts", path, line),
        neighborhood_prompts=tuple((p, target_true) for p in strings(rec, "neighborhood_prompts", path, line)),
        generation_prompts=optional_strings(rec, "generation_prompts", path, line),
        relation_id=rw.get("relation_id"),
        attribute_prompts=optional_strings(rec, "attribute_prompts", path, line),
    )


def _counterfact_reduced(rec: dict[str, Any], path: Path, line: int) -> CounterFactCase:
    prompt, subject = field(rec, "prompt", path, line), field(rec, "subject", path, line)
    if "{}" not in prompt:  # the reduced format fills the subject in: turn it back into a template
        if subject not in prompt:
            raise MalformedDataError(
                f"{path}, line {line}: the prompt {prompt!r} does not contain the subject {subject!r}"
            )
        prompt = prompt.replace(subject, "{}", 1)
    return CounterFactCase(
        case_id=field(rec, "case_id", path, line, int),
        prompt=prompt,
        subject=subject,
        target_new=field(rec, "target_new", path, line),
        target_true=field(rec, "ground_truth", path, line),
        paraphrase_prompts=(field(rec, "rephrase_prompt", path, line),),
        neighborhood_prompts=(
            (field(rec, "locality_prompt", path, line), field(rec, "locality_ground_truth", path, line)),
        ),
        generation_prompts=(),
        relation_id=rec.get("relation_id"),
    )


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
        files = [p for p in local if p.is_file()] or [require("counterfact/counterfact.json")]
    else:
        path = Path(path)
        files = sorted(path.glob("*.json")) if path.is_dir() else [path]
        if not files or not all(f.is_file() for f in files):
            raise FileNotFoundError(f"no CounterFact file at {path}")
    cases: dict[int, CounterFactCase] = {}
    for file in files:
        for line, rec in json_records(file):
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
        file = local if local is not None and local.is_file() else require("zsre/zsre_mem_eval.json")
    else:
        file = Path(path)
    cases = []
    for i, (line, rec) in enumerate(json_records(file)):
        answers = field(rec, "answers", file, line, (list, str))
        cases.append(
            ZsreCase(
                case_id=int(rec.get("case_id", i)),
                subject=field(rec, "subject", file, line),
                src=field(rec, "src", file, line),
                rephrase=field(rec, "rephrase", file, line),
                target_new=field(rec, "alt", file, line),
                answers=(answers,) if isinstance(answers, str) else tuple(str(a) for a in answers),
                loc=field(rec, "loc", file, line),
                loc_ans=field(rec, "loc_ans", file, line),
            )
        )
    return cases
