"""factlens.data: the real data sets (when FACTLENS_DATA_DIR points at them), the download
path (against a fake URL opener: this must pass offline), and every error message."""

from __future__ import annotations

import io
import json
import os
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest

from factlens import data
from factlens.data import (
    CounterFactCase,
    DataUnavailableError,
    KnownFact,
    LamaFact,
    MalformedDataError,
    Relation,
    ZsreCase,
    files,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "data"
ORIGINAL_COUNTERFACT = FIXTURES / "counterfact_original.json"

needs_data = pytest.mark.skipif(
    not os.environ.get("FACTLENS_DATA_DIR"),
    reason="FACTLENS_DATA_DIR is not set (CI points it at the local copies in shared/data)",
)


# --------------------------------------------------------------------------- the real data


@pytest.fixture(scope="module")
def trex() -> list[LamaFact]:
    return data.lama("TREx")


@pytest.fixture(scope="module")
def cases() -> list[CounterFactCase]:
    return data.counterfact()


@needs_data
def test_trex_counts_and_a_known_fact(trex):
    assert len(trex) == 32_421
    assert len({f.relation for f in trex}) == 41
    assert len({f.uuid for f in trex}) == 32_421
    first = next(f for f in trex if f.uuid == "6a9d91c1-eb9b-4142-8371-3c063ec40700")
    assert (first.subject, first.relation, first.object) == ("Allan Peiper", "P19", "Alexandra")
    assert first.template == "[X] was born in [Y] ."
    assert first.cloze() == "Allan Peiper was born in [MASK] ."
    assert first.evidences[0].startswith("Allan Peiper (born 26 April 1960 in [MASK], Australia)")
    # the 13 relations filled from ParaRel have no evidences
    p17 = [f for f in trex if f.relation == "P17"]
    assert p17[0].subject == "Eibenstock" and p17[0].object == "Germany" and p17[0].evidences == ()
    assert all("[X]" in f.template and "[Y]" in f.template for f in trex)
    assert data.lama("TREx", relation="P19") == [f for f in trex if f.relation == "P19"]


@needs_data
def test_relations_templates_and_types():
    relations = data.lama_relations()
    trex = {k: r for k, r in relations.items() if r.corpus == "TREx"}
    assert len(trex) == 46 and len(relations) == 49
    assert {r.type for r in trex.values()} == {"1-1", "N-1", "N-M"}
    assert [sum(r.type == t for r in trex.values()) for t in ("1-1", "N-1", "N-M")] == [2, 25, 19]
    assert all("[X]" in r.template and "[Y]" in r.template for r in relations.values())
    assert relations["P19"] == Relation(
        "P19", "place of birth", "[X] was born in [Y] .", "N-1", relations["P19"].description, "TREx"
    )
    assert relations["date_of_birth"] == Relation(
        "date_of_birth", "date of birth", "[X] (born [Y]).", "N-1", "", "Google_RE"
    )


@needs_data
def test_google_re_uses_lama_templates():
    facts = data.lama("Google_RE")
    assert len(facts) == 5_528
    counts = {r: sum(f.relation == r for f in facts) for r in data.GOOGLE_RE_TEMPLATES}
    assert counts == {"place_of_birth": 2_937, "date_of_birth": 1_825, "place_of_death": 766}
    mouradian = next(f for f in facts if f.uuid == "9c68053f-0e3a-4db1-ab37-4e12d89b26d8")
    assert mouradian.cloze("Lebanon") == "Khatchig Mouradian was born in Lebanon ."
    assert mouradian.object == "Lebanon" and mouradian.corpus == "Google_RE"
    martin = next(f for f in facts if f.uuid == "18af2dac-21d3-4c42-aff5-c247f245e203")
    assert martin.cloze() == "Peter F. Martin (born [MASK])." and martin.object == "1941"


@needs_data
def test_squad_template_is_the_masked_sentence():
    facts = data.lama("squad")  # names are case-insensitive
    assert len(facts) == 305
    assert all("[X]" not in f.template and "[Y]" in f.template and f.subject == "" for f in facts)
    gold = facts[0]
    assert gold.template == "To emphasize the 50th anniversary of the Super Bowl the [Y] color was used."
    assert gold.cloze() == "To emphasize the 50th anniversary of the Super Bowl the [MASK] color was used."
    assert (gold.object, gold.uuid, gold.relation) == ("gold", "56be4db0acb8001400a502f0_0", "Squad")
    assert sum(f.template.count("[Y]") == 2 for f in facts) == 3  # three sentences mask the object twice


@needs_data
def test_conceptnet_is_missing_locally():
    with pytest.raises(DataUnavailableError) as err:
        data.lama("ConceptNet")
    message = str(err.value)
    for part in ("FACTLENS_DATA_DIR", "lama/ConceptNet/test.jsonl", "https://dl.fbaipublicfiles.com/LAMA/data.zip"):
        assert part in message
    assert isinstance(err.value, FileNotFoundError)


@needs_data
def test_vocab_and_pararel():
    vocab = data.lama_vocab()
    assert len(vocab) == 21_018 and len(set(vocab)) == 21_018
    assert "Germany" in vocab and vocab[-1] == "|"
    patterns = data.pararel_patterns("P17")
    assert patterns[:2] == ["[X] is located in [Y] .", "[X], which is located in [Y]."]
    assert all("[X]" in p and "[Y]" in p for r in data.PARAREL_RELATIONS for p in data.pararel_patterns(r))


@needs_data
def test_known_facts():
    facts = data.known_facts()
    assert len(facts) == 1_209 and [f.known_id for f in facts] == list(range(1_209))
    assert facts[0] == KnownFact(
        0, "Vinson Massif", "Antarctica", "{} is located in the continent",
        " of Antarctica. It is the largest of the three", "Vinson Massif is located in the continent of", "P30",
    )  # fmt: skip
    assert all(f.prompt.startswith(f.template.format(f.subject)) for f in facts)


@needs_data
def test_counterfact_reduced_normalizes(cases):
    assert len(cases) == 21_919 and [c.case_id for c in cases] == list(range(21_919))
    assert cases[0] == CounterFactCase(
        case_id=0,
        prompt="The mother tongue of {} is",
        subject="Danielle Darrieux",
        target_new="English",
        target_true="French",
        paraphrase_prompts=("Where Danielle Darrieux is from, people speak the language of",),
        neighborhood_prompts=(("Michel Rocard is a native speaker of", "French"),),
    )
    assert cases[2].prompt == "{}, the" and cases[2].filled_prompt == "Toko Yasuda, the"
    assert all(c.prompt.count("{}") == 1 for c in cases)
    assert all(c.neighborhood_prompts[0][1] == c.target_true for c in cases)


@needs_data
def test_original_fixture_agrees_with_the_reduced_copy(cases):
    by_id = {c.case_id: c for c in cases}
    for case in data.counterfact(ORIGINAL_COUNTERFACT):
        reduced = by_id[case.case_id]
        assert (case.prompt, case.subject, case.target_new, case.target_true) == (
            reduced.prompt, reduced.subject, reduced.target_new, reduced.target_true,
        )  # fmt: skip
        assert reduced.paraphrase_prompts[0] in case.paraphrase_prompts
        assert reduced.neighborhood_prompts[0] in case.neighborhood_prompts


@needs_data
def test_zsre():
    cases = data.zsre()
    assert len(cases) == 1_000 and cases[-1].case_id == 999
    assert cases[0] == ZsreCase(
        0, "UniFirst", "What is the product made by UniFirst?", "What will be the product of UniFirst?",
        "unmanned aircraft", ("uniform",), "nq question: john goodman's character in the big lebowski",
        "Walter Sobchak",
    )  # fmt: skip
    assert cases[0].answer == "uniform"


@needs_data
def test_wikitext_sentences_detokenized_without_unk():
    sentences = list(data.corpus("wikitext", "valid"))
    # the file's first paragraph: its first sentence holds <unk> and is dropped, the next two are kept
    assert sentences[:3] == [
        "It is closely related to the American lobster, H. americanus.",
        "It may grow to a length of 60 cm (24 in) and a mass of 6 kilograms (13 lb), and bears a conspicuous "
        "pair of claws.",
        'In life, the lobsters are blue, only becoming "lobster red" on cooking.',
    ]
    assert len(sentences) == 2_749 and len(list(data.corpus(split="test"))) == 2_795
    assert not any("<unk>" in s or " @" in s or " , " in s or s.endswith(" .") or s != s.strip() or not s
                   for s in sentences)
    assert not any(s.startswith("= ") or s.startswith("==") for s in sentences)
    assert "Homarus gammarus is found across the north-eastern Atlantic Ocean from northern Norway to the Azores " \
           "and Morocco, not including the Baltic Sea." in sentences


def test_detokenize_hand_made_lines():
    """The rules of lm-evaluation-harness's wikitext_detokenizer, one or two per line."""
    cases = {
        " the north @-@ eastern coast , 1 @,@ 000 km from the sea . \n":
            " the north-eastern coast, 1,000 km from the sea.\n",
        " weighs 0 @.@ 7 kg ( 1 @.@ 5 lb ) ; it is blue ! Is it ? Yes : red . \n":
            " weighs 0.7 kg (1.5 lb); it is blue! Is it? Yes: red.\n",
        ' the " lobster red " colour of [ cooked ] lobsters and { x } \n':
            ' the "lobster red" colour of [cooked] lobsters and {x}\n',
        " the lobster 's claws and the lobsters ' claws \n": " the lobster's claws and the lobsters' claws\n",
        " 20 ° C at 57 ° N \n": " 20°C at 57°N\n",
        " = = History = = \n": " == History ==\n",
    }  # fmt: skip
    for line, expected in cases.items():
        assert data.detokenize(line) == expected, line


def test_corpus_drops_headings_and_unk_sentences(tmp_path, monkeypatch):
    monkeypatch.setenv("FACTLENS_DATA_DIR", str(tmp_path))
    (tmp_path / "wikitext-2").mkdir()
    (tmp_path / "wikitext-2" / "test.txt").write_text(
        " \n = Lobster = \n \n It is a <unk> lobster . It is blue , not red . Is it big ? \n"
        " = = Habitat = = \n Found in the U.S. and the north @-@ east . \n <unk> everywhere . \n"
    )
    assert list(data.corpus("wikitext", "test")) == [
        "It is blue, not red.", "Is it big?", "Found in the U.S. and the north-east.",
    ]


# --------------------------------------------------------------------------- formats, no data needed


def test_original_format_fixture_normalizes():
    cases = data.counterfact(ORIGINAL_COUNTERFACT)
    assert [c.case_id for c in cases] == [0, 2, 21918]
    first = cases[0]
    assert isinstance(first, CounterFactCase)
    assert first.prompt == "The mother tongue of {} is"
    assert first.filled_prompt == "The mother tongue of Danielle Darrieux is"
    assert (first.subject, first.target_new, first.target_true, first.relation_id) == (
        "Danielle Darrieux", "English", "French", "P103",
    )  # fmt: skip
    assert len(first.paraphrase_prompts) == 2
    assert first.neighborhood_prompts[1] == ("The native language of Jean Gabin is", "French")
    assert all(obj == "French" for _, obj in first.neighborhood_prompts)
    assert first.generation_prompts[0] == "Danielle Darrieux's mother tongue is"
    assert first.attribute_prompts == ("The mother tongue of Douglas Adams is",)
    assert cases[2].generation_prompts == () and cases[2].attribute_prompts == ()


def _reduced(case_id: int, subject: str = "Toko Yasuda", **extra) -> dict:
    return {
        "case_id": case_id, "prompt": f"{subject}, the", "target_new": "piano", "subject": subject,
        "ground_truth": "guitar", "rephrase_prompt": f"{subject} is incredible at",
        "locality_prompt": "John Lennon performs on the", "locality_ground_truth": "guitar", **extra,
    }  # fmt: skip


def test_reduced_and_original_files_deduplicate(tmp_path):
    folder = tmp_path / "cf"
    folder.mkdir()
    (folder / "a.json").write_text(json.dumps([_reduced(2), _reduced(5, "Kim Gordon")]))
    (folder / "b.json").write_text(json.dumps([_reduced(5, "Kim Gordon")]))  # the same case again
    cases = data.counterfact(folder)
    assert [c.case_id for c in cases] == [2, 5]
    assert cases[0] == CounterFactCase(
        2, "{}, the", "Toko Yasuda", "piano", "guitar",
        ("Toko Yasuda is incredible at",), (("John Lennon performs on the", "guitar"),),
    )  # fmt: skip
    (folder / "c.json").write_text(json.dumps([_reduced(2, "Someone Else")]))
    with pytest.raises(MalformedDataError, match=r"c\.json, line 1: case_id 2 was already read"):
        data.counterfact(folder)


def test_malformed_files_name_file_and_line(tmp_path, monkeypatch):
    monkeypatch.setenv("FACTLENS_DATA_DIR", str(tmp_path))
    lama = tmp_path / "lama"
    (lama / "TREx").mkdir(parents=True)
    (lama / "relations.jsonl").write_text(
        json.dumps({"relation": "P19", "template": "[X] was born in [Y] .", "label": "place of birth", "type": "N-1"})
        + "\n"
    )
    good = {"sub_label": "A", "obj_label": "B", "uuid": "u1"}
    trex = lama / "TREx" / "P19.jsonl"
    trex.write_text(json.dumps(good) + "\n" + json.dumps({"sub_label": "C", "uuid": "u2"}) + "\n")
    with pytest.raises(MalformedDataError, match=r"P19\.jsonl, line 2: missing field 'obj_label'") as err:
        data.lama("TREx")
    assert str(trex) in str(err.value)
    trex.write_text(json.dumps(good) + "\n\n" + '{"sub_label": "C", "obj_label": \n')
    with pytest.raises(MalformedDataError, match=r"P19\.jsonl, line 3: not valid JSON"):
        data.lama("TREx")
    bad = tmp_path / "cf.json"
    bad.write_text("[\n" + json.dumps(_reduced(1)) + ",\n" + json.dumps({"case_id": 2, "prompt": "x"}) + "\n]")
    with pytest.raises(MalformedDataError, match=r"cf\.json, line 3: missing field 'subject'"):
        data.counterfact(bad)
    bad.write_text("[\n" + json.dumps(_reduced(1, prompt="No subject here")) + "\n]")
    with pytest.raises(MalformedDataError, match=r"cf\.json, line 2: the prompt 'No subject here' does not contain"):
        data.counterfact(bad)


def test_unknown_names_are_value_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("FACTLENS_DATA_DIR", str(tmp_path))
    with pytest.raises(ValueError,
                       match="unknown LAMA corpus 'Wikidata'; valid names: TREx, Google_RE, Squad, ConceptNet"):
        data.lama("Wikidata")
    with pytest.raises(ValueError, match="ParaRel has no patterns for relation 'P999'; it has: P1001, P101"):
        data.pararel_patterns("P999")
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        data.corpus("wikitext", "dev")
    with pytest.raises(ValueError, match="unknown corpus 'c4'"):
        data.corpus("c4")


def test_missing_local_file_names_variable_path_and_url(tmp_path, monkeypatch):
    monkeypatch.setenv("FACTLENS_DATA_DIR", str(tmp_path))
    with pytest.raises(DataUnavailableError) as err:
        data.known_facts()
    message = str(err.value)
    assert f"FACTLENS_DATA_DIR={tmp_path}" in message and "rome/known_1000.json" in message
    assert "https://rome.baulab.info/data/dsets/known_1000.json" in message


# --------------------------------------------------------------------------- downloads (offline, faked)


class FakeServer:
    """Stands in for ``urllib.request.urlopen``: serves ``files`` by URL and records the calls."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.short: set[str] = set()  # URLs whose body is cut short of its Content-Length
        self.calls: list[str] = []

    def __call__(self, url, timeout=None):
        self.calls.append(url)
        if url not in self.files:
            raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
        body = self.files[url]
        response = io.BytesIO(body[: len(body) // 2] if url in self.short else body)
        response.headers = {"Content-Length": str(len(body))}
        return response


@pytest.fixture
def server(tmp_path, monkeypatch) -> FakeServer:
    monkeypatch.delenv("FACTLENS_DATA_DIR", raising=False)
    monkeypatch.setenv("FACTLENS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(files, "_verified", {})
    fake = FakeServer()
    monkeypatch.setattr(urllib.request, "urlopen", fake)
    return fake


KNOWN_URL = "https://rome.baulab.info/data/dsets/known_1000.json"
KNOWN = [
    {"known_id": 0, "subject": "Vinson Massif", "attribute": "Antarctica", "template": "{} is located in the continent",
     "prediction": " of Antarctica.", "prompt": "Vinson Massif is located in the continent of", "relation_id": "P30"},
    {"known_id": 1, "subject": "Beats Music", "attribute": "Apple", "template": "{} is owned by",
     "prediction": " Apple Inc.", "prompt": "Beats Music is owned by", "relation_id": "P127", "extra": True},
]  # fmt: skip


def test_download_cache_checksum_and_redownload(server, tmp_path):
    server.files[KNOWN_URL] = json.dumps(KNOWN).encode()
    facts = data.known_facts()
    assert [f.subject for f in facts] == ["Vinson Massif", "Beats Music"] and facts[1].relation_id == "P127"
    cached = tmp_path / "cache" / "data" / "rome" / "known_1000.json"
    sidecar = cached.with_name("known_1000.json.sha256")
    assert cached.read_bytes() == server.files[KNOWN_URL]
    import hashlib

    assert sidecar.read_text().split()[0] == hashlib.sha256(cached.read_bytes()).hexdigest()
    assert data.known_facts() == facts and server.calls == [KNOWN_URL]  # read from the cache
    assert not [p for p in cached.parent.iterdir() if "partial" in p.name]

    files._verified.clear()  # a new process
    cached.write_bytes(cached.read_bytes()[:-5])  # damaged in place
    with pytest.warns(UserWarning, match="known_1000.json is not trusted because its SHA-256 differs"):
        assert data.known_facts() == facts
    assert server.calls == [KNOWN_URL, KNOWN_URL]

    sidecar.unlink()  # e.g. killed between the rename and the digest
    files._verified.clear()
    with pytest.warns(UserWarning, match="no recorded SHA-256"):
        assert data.known_facts() == facts
    assert len(server.calls) == 3 and sidecar.is_file()


def test_offline_error_names_variable_path_and_url(server, tmp_path):
    with pytest.raises(DataUnavailableError) as err:
        data.known_facts()
    message = str(err.value)
    assert "FACTLENS_DATA_DIR is not set" in message and "rome/known_1000.json" in message
    assert KNOWN_URL in message and "name resolution" in message
    assert not (tmp_path / "cache" / "data" / "rome" / "known_1000.json").exists()


def test_partial_or_unparsable_download_is_not_kept(server, tmp_path):
    folder = tmp_path / "cache" / "data" / "rome"
    server.files[KNOWN_URL] = json.dumps(KNOWN).encode()
    server.short.add(KNOWN_URL)
    with pytest.raises(DataUnavailableError, match="cut short"):
        data.known_facts()
    assert list(folder.iterdir()) == []
    server.short.clear()
    server.files[KNOWN_URL] = b'[{"known_id": 0,\n "subject": '
    with pytest.raises(MalformedDataError, match=rf"{KNOWN_URL} \(downloaded for rome/known_1000.json\), line 2"):
        data.known_facts()
    assert list(folder.iterdir()) == []


def _jsonl_bytes(*records: dict) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def test_lama_zip_downloaded_once_and_extracted(server, tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("data/relations.jsonl", _jsonl_bytes(
            {"relation": "P19", "template": "[X] was born in [Y] .", "label": "place of birth", "type": "N-1"},
            {"relation": "P166", "template": "[X] was awarded the [Y] .", "label": "award received", "type": "N-M"},
        ))  # fmt: skip
        zf.writestr("data/TREx/P19.jsonl", _jsonl_bytes({"sub_label": "A", "obj_label": "B", "uuid": "u1"}))
        zf.writestr("data/ConceptNet/test.jsonl", _jsonl_bytes(
            {"sub": "alive", "obj": "think", "pred": "HasSubevent", "obj_label": "think", "uuid": "c1",
             "masked_sentences": ["One of the things you do when you are alive is [MASK]."]},
        ))  # fmt: skip
    server.files[data.LAMA_ZIP_URL] = buffer.getvalue()
    assert data.lama("TREx") == [LamaFact("A", "P19", "B", "[X] was born in [Y] .", "u1", "TREx")]
    concept = data.lama("ConceptNet")
    assert concept == [LamaFact(
        "alive", "HasSubevent", "think", "One of the things you do when you are alive is [Y].", "c1", "ConceptNet",
        ("One of the things you do when you are alive is [MASK].",),
    )]  # fmt: skip
    assert server.calls == [data.LAMA_ZIP_URL]  # one download, P166's absent file is not re-fetched
    assert (tmp_path / "cache" / "data" / "lama" / "TREx" / "P19.jsonl.sha256").is_file()
    with pytest.raises(DataUnavailableError, match="lama/Squad/test.jsonl is not available.*has no such member"):
        data.lama("Squad")
    assert server.calls == [data.LAMA_ZIP_URL]
    with pytest.raises(DataUnavailableError, match=r"common_vocab_cased.txt.*FACTLENS_DATA_DIR is not set.*OptiPrompt"):
        data.lama_vocab()


def test_wikitext_from_hub_parquet(server):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    lines = ["", " = Homarus gammarus = \n", "", " Homarus gammarus is a lobster . \n", " = = Description = = \n",
             " It is blue . \n"]  # fmt: skip
    buffer = io.BytesIO()
    pq.write_table(pa.table({"text": lines}), buffer)
    url = "https://huggingface.co/datasets/Salesforce/wikitext/resolve/main/wikitext-2-v1/validation-00000-of-00001.parquet"
    server.files[url] = buffer.getvalue()
    assert list(data.corpus("wikitext", "validation")) == ["Homarus gammarus is a lobster.", "It is blue."]
    assert list(data.corpus()) == ["Homarus gammarus is a lobster.", "It is blue."]
    assert server.calls == [url]
