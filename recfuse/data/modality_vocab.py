"""Token and category vocabularies of a catalog's text-token and categorical modalities.

Computed once on the training catalog and stored with the candidate tower
(``CandidateTower.vocabularies``), so a tower rebuilt for export or serving maps tokens and
categories to the same embedding rows. Two ids of each vocabulary are reserved (padding and OOV):
a modality's vocabulary holds at most ``vocab_size - 2`` entries.

Example:
    >>> vocabs = catalog_vocabularies(items, cfg)   # doctest: +SKIP
    >>> vocabs["text"][:3], vocabs["categories"][:2]  # doctest: +SKIP
    (['red', 'shoe', 'hat'], ['shoes', 'hats'])
"""

from __future__ import annotations

import logging

import pandas as pd

from recfuse.config import RecfuseConfig
from recfuse.data.item_features import CATEGORY_SEPARATOR, category_strings, text_tokens
from recfuse.data.text_tokens import build_vocabulary

logger = logging.getLogger(__name__)


def catalog_vocabularies(items: pd.DataFrame, cfg: RecfuseConfig) -> dict[str, list[str]]:
    """Token / category vocabularies of the text-token and categorical modalities, from the catalog.

    Text: the ``vocab_size - 2`` most frequent tokens found in at least ``min_item_count`` items (2 ids
    are padding and OOV; rarer tokens map to OOV). Categories: every
    category value (at most ``vocab_size - 2``), most frequent first.
    """
    vocabs: dict[str, list[str]] = {}
    for m in cfg.modalities:
        if m.kind == "text" and m.source == "tokens":
            vocabs[m.name] = build_vocabulary(text_tokens(items, m).tolist(), m.vocab_size - 2, m.min_item_count)
        elif m.kind == "categorical":
            # category values may contain spaces: split on the separator, not with build_vocabulary
            joined = category_strings(items, m).tolist()
            counts: dict[str, int] = {}
            for s in joined:
                for v in s.split(CATEGORY_SEPARATOR) if s else ():
                    counts[v] = counts.get(v, 0) + 1
            ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
            vocabs[m.name] = [v for v, _ in ranked[: m.vocab_size - 2]]
        if m.name in vocabs:
            logger.info("modality %s: vocabulary of %d entries", m.name, len(vocabs[m.name]))
    return vocabs
