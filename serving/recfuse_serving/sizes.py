"""Upper bounds of response sizes on the wire, so an answer that could not be sent is refused before work.

grpc refuses to send a message over ``max_message_bytes`` only *after* the handler ran (the client
gets RESOURCE_EXHAUSTED "Sent message larger than max" and the server wasted the work). Instead the
servicer bounds each response from the request — ``k`` (per sub-request of a batch) × the largest
item of the answering bundle + a header bound — and answers INVALID_ARGUMENT naming the fields when
it could exceed the cap; the server refuses to start when a single request at ``max_k`` could not fit
with the configured bounds (:func:`check_config`).

Protobuf framing used here: a string/bytes/message field costs 1 tag byte + a varint length (≤ 3
bytes below 2 MiB, ≤ 4 below 256 MiB) + its bytes; a float 5 bytes, a double 9, an enum ≤ 3.

Example:
    >>> item_bound(6, 40)
    66
"""

from __future__ import annotations

from recfuse.errors import ConfigError, InvalidRequestError

# ScoredItem: entry tag + length (4) + item_id tag + length (4) + score (5) + title tag + length (4), rounded up
ITEM_FRAMING = 20
# Response fields besides items, variant and version: fallback (3), fallback_reason (≤ 64 + 4),
# timing (4 + 3 × 9), request_id (≤ 128 + "-NNNN" + 4), per-response framing inside a batch (5), rounded up
HEADER_FIXED = 320
MAX_VARIANT_CHARS = 64
UTF8_MAX = 4  # bytes per character, worst case


def item_bound(id_bytes: int, title_bytes: int) -> int:
    """Most bytes one returned item adds to a response (UTF-8 lengths of its id and served title)."""
    return id_bytes + title_bytes + ITEM_FRAMING


def header_bound(variant_bytes: int, version_bytes: int) -> int:
    """Most bytes of a Recommend/SimilarItems response without its items (two version fields)."""
    return HEADER_FIXED + variant_bytes + 2 * version_bytes


def check_config(max_k: int, max_id_length: int, max_title_chars: int, max_message_bytes: int) -> None:
    """Refuse limits whose worst single response (``max_k`` items, every id ``max_id_length`` and every title
    ``max_title_chars`` characters of 4-byte UTF-8) cannot fit ``max_message_bytes``.

    Raises:
        ConfigError: naming the limits and the sizes.
    """
    per_item = item_bound(UTF8_MAX * max_id_length, UTF8_MAX * max_title_chars)
    worst = max_k * per_item + header_bound(UTF8_MAX * MAX_VARIANT_CHARS, UTF8_MAX * 256)
    if worst > max_message_bytes:
        raise ConfigError(
            f"`max_k` = {max_k} items of up to {per_item} bytes each (`max_id_length` = {max_id_length}, "
            f"`max_title_chars` = {max_title_chars}, 4-byte UTF-8) make a response of up to {worst} bytes, over "
            f"`max_message_bytes` = {max_message_bytes}; lower max_k, max_id_length or max_title_chars, or raise "
            "max_message_bytes"
        )


def check_response(field: str, k: int, item_bytes: int, header_bytes: int, max_message_bytes: int) -> None:
    """Raise when ``k`` items of up to ``item_bytes`` each (+ ``header_bytes``) could exceed the cap.

    Raises:
        InvalidRequestError: naming ``field`` and the largest ``k`` that fits.
    """
    if k * item_bytes + header_bytes > max_message_bytes:
        fit = max(0, (max_message_bytes - header_bytes) // item_bytes)
        raise InvalidRequestError(
            f"`{field}` = {k}: the answer could take {k * item_bytes + header_bytes} bytes ({item_bytes} per item "
            f"in this bundle), over the server's max message size {max_message_bytes}; ask for at most {fit} items"
        )


def check_batch(ks: list[int], item_bytes: list[int], header_bytes: list[int], max_message_bytes: int) -> None:
    """Raise when a RecommendBatch answer (``ks[i]`` items of up to ``item_bytes[i]`` each) could exceed the cap.

    Raises:
        InvalidRequestError: naming ``requests`` and ``requests[*].k`` with the totals.
    """
    total = sum(k * b + h for k, b, h in zip(ks, item_bytes, header_bytes))
    if total > max_message_bytes:
        per = max(item_bytes, default=1)
        fit = max(0, (max_message_bytes - sum(header_bytes)) // per)
        raise InvalidRequestError(
            f"`requests` ({len(ks)} entries) × `requests[*].k` ({sum(ks)} items in all) could take {total} bytes, "
            f"over the server's max message size {max_message_bytes}; ask for at most about {fit} items in all "
            "(fewer requests per batch or a smaller k)"
        )
