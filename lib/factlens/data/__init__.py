"""The data sets of the three papers, as plain frozen records.

* LAMA (Petroni et al. 2019): :func:`lama` (T-REx, Google-RE, SQuAD, ConceptNet),
  :func:`lama_relations`, :func:`lama_vocab`; ParaRel paraphrases: :func:`pararel_patterns`.
* ROME (Meng et al. 2022): :func:`known_facts`, :func:`counterfact`, :func:`zsre`.
* A text corpus for Geva et al. 2021's trigger examples and ROME's statistics: :func:`corpus`
  (WikiText, detokenized).

One module per concern: :mod:`~factlens.data.files` (where each file lives, downloads and
their checks: ``$FACTLENS_DATA_DIR`` or the cache), :mod:`~factlens.data.reading` (JSON
records with errors naming file and line), :mod:`~factlens.data.records` (the records),
and a parser module per family of data sets: :mod:`~factlens.data.lama_sets`,
:mod:`~factlens.data.rome_sets`, :mod:`~factlens.data.wikitext`.
"""

from __future__ import annotations

from factlens.data.files import (
    ENV_VAR,
    LAMA_ZIP_URL,
    DataUnavailableError,
    data_file,
    data_root,
)
from factlens.data.lama_sets import (
    GOOGLE_RE_TEMPLATES,
    LAMA_CORPORA,
    PARAREL_RELATIONS,
    lama,
    lama_relations,
    lama_vocab,
    pararel_patterns,
)
from factlens.data.reading import MalformedDataError
from factlens.data.records import CounterFactCase, KnownFact, LamaFact, Relation, ZsreCase
from factlens.data.rome_sets import counterfact, known_facts, zsre
from factlens.data.wikitext import corpus, detokenize

__all__ = [
    "ENV_VAR",
    "GOOGLE_RE_TEMPLATES",
    "LAMA_CORPORA",
    "LAMA_ZIP_URL",
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
    "detokenize",
    "known_facts",
    "lama",
    "lama_relations",
    "lama_vocab",
    "pararel_patterns",
    "zsre",
]
