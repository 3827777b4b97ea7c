"""Tokeniser (word tokens + CJK n-grams) and the text / category encoders."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from recfuse.data.text_tokens import build_vocabulary, tokenize, tokenize_fields
from recfuse.layers.categorical import CategoryEncoder
from recfuse.layers.text import MaskedMeanPooling, TextEncoder, TransformerBlock


def test_tokenize_words_are_lowercased_and_split_on_non_alphanumerics() -> None:
    assert tokenize("Red Running-Shoes, size 42!") == "red running shoes size 42"
    assert tokenize("snake_case") == "snake case"
    assert tokenize("") == "" and tokenize(None) == ""


def test_tokenize_chinese_gives_unigrams_and_bigrams() -> None:
    assert tokenize("无线耳机").split() == ["无", "线", "耳", "机", "无线", "线耳", "耳机"]


def test_tokenize_mixed_japanese_latin_and_fullwidth() -> None:
    toks = tokenize("ソニー ＷＨ-1000XM5 ヘッドホン").split()
    assert "ソニ" in toks and "ニー" in toks and "ヘッ" in toks
    assert "wh" in toks and "1000xm5" in toks  # full-width letters are NFKC-normalised


def test_tokenize_char_ngrams_option() -> None:
    assert tokenize("耳机", char_ngrams=1) == "耳 机"
    assert tokenize("无线耳", char_ngrams=3).split() == ["无", "线", "耳", "无线", "线耳", "无线耳"]
    with pytest.raises(ValueError, match="char_ngrams"):
        tokenize("x", char_ngrams=0)


def test_tokenize_fields_joins_in_order() -> None:
    assert tokenize_fields(["Blue Hat", None, "", "毛帽"]) == "blue hat 毛 帽 毛帽"


def test_build_vocabulary_is_frequency_then_alphabetical() -> None:
    assert build_vocabulary(["b a", "a c", "c b a"], 10) == ["a", "b", "c"]
    assert build_vocabulary(["z y", "y"], 1) == ["y"]
    assert build_vocabulary(["", ""], 5) == []


def test_build_vocabulary_min_items_counts_items_not_occurrences() -> None:
    # "x" occurs 3 times but in one item only: with min_items=2 it is dropped (it would be OOV)
    texts = ["a b x x x", "a c", "a b d"]
    assert build_vocabulary(texts, 10) == ["a", "x", "b", "c", "d"]
    assert build_vocabulary(texts, 10, min_items=2) == ["a", "b"]
    assert build_vocabulary(texts, 10, min_items=3) == ["a"]
    assert build_vocabulary(texts, 1, min_items=2) == ["a"]


def test_catalog_vocabulary_applies_the_modality_min_item_count() -> None:
    import pandas as pd

    from recfuse.config import ModalityConfig, RecfuseConfig
    from recfuse.data.modality_vocab import catalog_vocabularies

    items = pd.DataFrame({"item_id": ["i1", "i2", "i3"], "title": ["red shoe zz", "red hat", "blue shoe"]})

    def vocab(min_count: int) -> list[str]:
        text = ModalityConfig(name="text", kind="text", columns=("title",), min_item_count=min_count)
        return catalog_vocabularies(items, RecfuseConfig(modalities=(text,)))["text"]

    assert set(vocab(1)) == {"red", "shoe", "zz", "hat", "blue"}
    assert vocab(2) == ["red", "shoe"]


def test_text_encoder_mean_equals_hand_computed_masked_mean() -> None:
    enc = TextEncoder(vocabulary=["red", "shoe", "hat"], max_tokens=5, embedding_dim=4)
    out = enc(tf.constant(["red shoe", "", "hat unknownword"])).numpy()
    table = enc.embed.get_weights()[0]  # rows: 0 pad, 1 OOV, 2 red, 3 shoe, 4 hat
    np.testing.assert_allclose(out[0], table[[2, 3]].mean(0), rtol=1e-6)
    np.testing.assert_allclose(out[1], np.zeros(4), atol=0)
    np.testing.assert_allclose(out[2], table[[4, 1]].mean(0), rtol=1e-6)
    assert enc.token_ids(tf.constant(["red red red red red red"])).shape == (1, 5)


def test_chinese_title_embeds_with_in_vocabulary_bigrams() -> None:
    titles = ["无线耳机 降噪", "蓝牙耳机", "机械键盘"]
    vocab = build_vocabulary([tokenize(t) for t in titles], 100)
    assert "耳机" in vocab
    enc = TextEncoder(vocabulary=vocab, max_tokens=16, embedding_dim=8, encoder="transformer")
    ids = enc.token_ids(tf.constant([tokenize("无线耳机")])).numpy()[0]
    assert (ids[ids > 0] >= 2).all() and (ids > 0).sum() == 7  # every token known, none OOV
    out = enc(tf.constant([tokenize("无线耳机"), tokenize("机械键盘")])).numpy()
    assert np.abs(out).sum(axis=1).min() > 0 and not np.allclose(out[0], out[1])


def test_transformer_output_ignores_padding_positions_values() -> None:
    block = TransformerBlock(dim=8, num_heads=2)
    x = tf.random.normal([2, 5, 8], seed=1)
    mask = tf.constant([[True, True, True, False, False], [True] * 5])
    y1 = block(x, mask=mask).numpy()
    x2 = tf.concat([x[:, :3], 100.0 + tf.random.normal([2, 2, 8], seed=2)], axis=1)
    y2 = block(x2, mask=mask).numpy()
    np.testing.assert_allclose(y1[0, :3], y2[0, :3], atol=1e-5)


def test_masked_mean_pooling_all_masked_row_is_zero() -> None:
    x = tf.ones([2, 3, 2])
    out = MaskedMeanPooling()(x, mask=tf.constant([[0, 0, 0], [1, 0, 1]])).numpy()
    np.testing.assert_array_equal(out, [[0, 0], [1, 1]])


def test_text_encoder_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="encoder"):
        TextEncoder(vocabulary=["a"], encoder="lstm")
    with pytest.raises(ValueError, match="vocabulary"):
        TextEncoder(vocabulary=["a b"])


def test_category_encoder_mean_of_known_categories() -> None:
    enc = CategoryEncoder(vocabulary=["shoes", "red"], embedding_dim=3)
    out = enc(tf.constant(["shoes|red", "", "red|nope"])).numpy()
    table = enc.embed.get_weights()[0]  # 0 pad, 1 OOV, 2 shoes, 3 red
    np.testing.assert_allclose(out[0], table[[2, 3]].mean(0), rtol=1e-6)
    np.testing.assert_array_equal(out[1], np.zeros(3))
    np.testing.assert_allclose(out[2], table[[3, 1]].mean(0), rtol=1e-6)
    assert enc(tf.constant(["", ""])).shape == (2, 3)  # a batch without any category still works
    with pytest.raises(ValueError, match="vocabulary"):
        CategoryEncoder(vocabulary=["a|b"])


def test_transformer_row_output_does_not_depend_on_batch_padding() -> None:
    enc = TextEncoder(["a", "b", "c"], max_tokens=8, embedding_dim=8, encoder="transformer")
    alone = enc(tf.constant(["a b"])).numpy()[0]
    with_long = enc(tf.constant(["a b", "c a b c a b c"])).numpy()[0]  # batch trimmed to 7 vs 2 positions
    np.testing.assert_allclose(with_long, alone, atol=1e-5)
    ids = enc.token_ids(tf.constant(["a b", ""]))
    np.testing.assert_allclose(enc(ids).numpy()[0], alone, atol=1e-5)  # int ids in, same output
    np.testing.assert_array_equal(enc(ids).numpy()[1], 0.0)  # empty text -> zeros


def test_token_dropout_hides_tokens_while_training_only() -> None:
    vocab = [f"t{i}" for i in range(8)]
    enc = TextEncoder(vocab, max_tokens=8, embedding_dim=4, token_dropout=0.5)
    plain = TextEncoder(vocab, max_tokens=8, embedding_dim=4)
    text = tf.constant([" ".join(vocab), "t3", ""])
    plain(text)
    enc(text)
    plain.set_weights(enc.get_weights())
    table = enc.embed.get_weights()[0]  # rows 0 (padding) and 1 (OOV), then the vocabulary
    np.testing.assert_array_equal(enc(text, training=False).numpy(), plain(text).numpy())
    tf.random.set_seed(3)
    subsets = set()
    for _ in range(40):
        out = enc(text, training=True).numpy()
        # row 0 is the mean of a non-empty subset of its 8 token vectors: find which subset
        rows = table[2:10]
        match = [
            m
            for m in range(1, 256)
            if np.allclose(out[0], rows[[b for b in range(8) if m >> b & 1]].mean(axis=0), atol=1e-6)
        ]
        assert len(match) == 1, "training output is not the mean of a subset of the row's tokens"
        subsets.add(match[0])
        np.testing.assert_allclose(out[1], table[2 + 3], atol=1e-6)  # a single token is never dropped
        np.testing.assert_array_equal(out[2], np.zeros(4, np.float32))  # empty text stays zeros
    assert len(subsets) > 20  # a different subset on most calls
    assert np.mean([bin(m).count("1") for m in subsets]) == pytest.approx(4.0, abs=1.0)  # about half kept


def test_token_dropout_is_checked() -> None:
    with pytest.raises(ValueError, match=r"`token_dropout` must be in \[0, 1\), got 1.0"):
        TextEncoder(["a"], token_dropout=1.0)
