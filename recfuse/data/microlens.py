"""MicroLens-50k reader: the two original files → recfuse's catalog and interactions, with a split column.

Source files (unmodified, never copied into the project; see the dataset's README for its terms):

- ``MicroLens-50k_pairs.tsv``: one line per user, ``user_id<TAB>item item …`` in chronological order,
  no timestamps;
- ``MicroLens-50k_titles.csv``: header ``item,title``; titles carry ``#hashtags``.

What the conversion produces:

- items: ``item_id`` (str), ``title`` (the original title, hashtags kept: a hashtag has no end
  marker, so the last one often runs to the end of the title and stripping would cut real title
  text; the MicroLens paper's text encoders read the whole title too), ``categories`` (the
  hashtags: each ``#`` starts one that runs to the next ``#`` or the end, whitespace-trimmed,
  lower-cased, empty ones skipped, duplicates dropped keeping the first; see :func:`parse_hashtags`).
- interactions: ``user_id``, ``item_id`` (str), ``timestamp`` (int64, the interaction's 0-based
  position in the user's sequence: it keeps the order within a user and means nothing across
  users, so no global-time split can be made from it) and ``split`` (``train``/``valid``/``test``).

Rows are dropped only for a counted reason (:attr:`MicroLensData.dropped`): ``no_title`` (the item
has no row in the titles file), ``repeat`` (the user names the item again later: the latest position
is kept) and ``over_max_items`` (cut by ``max_items_per_user``, oldest first); users are counted
under ``user_without_items`` (a pairs line naming no item) and ``user_without_kept_items`` (every
item of the line was dropped).

Protocols (per user, over the kept items; users with fewer than 3 items stay all ``train`` and are
counted in ``train_only_users``):

- ``loo`` (the MicroLens paper's): last item → ``test``, the one before → ``valid``, the rest ``train``.
- ``random`` (the MMRec / Amazon-review 8:1:1): ``valid`` and ``test`` get ``max(1, round(0.1 n))``
  items each (round half to even); each interaction draws a uniform number from
  ``numpy.random.default_rng(seed)`` in file order, and within a user the lowest draws are ``test``,
  the next ones ``valid``, the rest ``train``.

:func:`recfuse.data.microlens_convert.convert_microlens` writes these tables, a record and a ready
config into a folder, atomically.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from recfuse.errors import DataError, SchemaError
from recfuse.fsio import sha256_file

logger = logging.getLogger(__name__)

PAIRS_FILE = "MicroLens-50k_pairs.tsv"
TITLES_FILE = "MicroLens-50k_titles.csv"
#: sha256 of the unmodified originals (the dataset README's table)
EXPECTED_SHA256: dict[str, str] = {
    PAIRS_FILE: "46be22f478aa891b9c2a4b357c1df2ac2478793a99d58d07336e6277b6bf426d",
    TITLES_FILE: "244aad5380cbbe0fb43458cfcda5ebe820f534384602f80a64dbbcd07dd30e49",
}
PROTOCOLS = ("loo", "random")
SPLIT_NAMES = ("train", "valid", "test")
MIN_ITEMS_TO_SPLIT = 3


@dataclass(frozen=True)
class MicroLensData:
    """The converted tables and what happened on the way.

    Attributes:
        items: ``[n_items]`` rows: item_id, title, categories (list of str).
        interactions: ``[n]`` rows: user_id, item_id, timestamp (int64 position), split.
        counts: users, items, interactions, items_with_hashtags, distinct_hashtags,
            items_without_interactions, train/valid/test rows, train_only_users.
        dropped: reason → number of interaction rows removed (``user_*`` reasons: users).
        sha256: file name → sha256 of the source file.
        checksum_mismatches: names of source files whose sha256 differs from the expected value.
        protocol, seed, max_items_per_user: the options used (``max_items_per_user`` 0: no cut).
    """

    items: pd.DataFrame
    interactions: pd.DataFrame
    counts: dict[str, int]
    dropped: dict[str, int]
    sha256: dict[str, str]
    checksum_mismatches: list[str] = field(default_factory=list)
    protocol: str = "loo"
    seed: int = 42
    max_items_per_user: int = 0


def parse_hashtags(title: str) -> list[str]:
    """Hashtags of a title: each ``#`` starts one that runs to the next ``#`` or the end.

    Tags are whitespace-trimmed (inner runs of whitespace become one space) and lower-cased; empty
    ones are skipped and repeats dropped, first occurrence kept.

    Example:
        >>> parse_hashtags("Iron Man vs God # Marvel # Iron Man #marvel")
        ['marvel', 'iron man']
    """
    tags = (" ".join(part.split()).lower() for part in title.split("#")[1:])
    return [t for t in dict.fromkeys(tags) if t]


def read_titles(path: str | Path) -> pd.DataFrame:
    """Read the titles CSV into ``item_id, title, categories``.

    Raises:
        SchemaError: missing/empty file, a header other than ``item,title``, a row without exactly
            two fields, an empty or repeated item id.
    """
    p = Path(path)
    if not p.is_file():
        raise SchemaError(f"titles file {str(p)!r} does not exist; pass --src the folder holding {TITLES_FILE}")
    with open(p, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header != ["item", "title"]:
            raise SchemaError(
                f"titles file {str(p)!r}: header is {header!r}, expected ['item', 'title']; "
                "is this the unmodified MicroLens titles CSV?"
            )
        ids: list[str] = []
        titles: list[str] = []
        for row in reader:
            if not row:
                continue
            if len(row) != 2 or not row[0].strip():
                raise SchemaError(
                    f"titles file {str(p)!r} line {reader.line_num}: expected 2 fields 'item,title' with a "
                    f"non-empty item, got {len(row)} field(s): {str(row)[:80]}"
                )
            ids.append(row[0].strip())
            titles.append(row[1])
    frame = pd.DataFrame({"item_id": ids, "title": titles})
    repeated = frame["item_id"][frame["item_id"].duplicated()]
    if len(repeated):
        raise SchemaError(
            f"titles file {str(p)!r}: {len(repeated)} item id(s) appear more than once "
            f"(e.g. {repeated.iloc[0]!r}); each item needs exactly one title row"
        )
    frame["categories"] = pd.Series([parse_hashtags(t) for t in titles], dtype=object)
    return frame


def read_pairs(path: str | Path) -> tuple[list[tuple[str, list[str]]], int]:
    """Read the pairs TSV into ``([(user_id, items in time order)], users without items)``.

    Raises:
        SchemaError: missing file, a line whose user id holds spaces (a missing tab), a repeated user.
    """
    p = Path(path)
    if not p.is_file():
        raise SchemaError(f"pairs file {str(p)!r} does not exist; pass --src the folder holding {PAIRS_FILE}")
    users: list[tuple[str, list[str]]] = []
    seen: dict[str, int] = {}
    empty = 0
    with open(p, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            user, _, rest = line.rstrip("\r\n").partition("\t")
            user = user.strip()
            if not user or len(user.split()) != 1:
                raise SchemaError(
                    f"pairs file {str(p)!r} line {lineno}: expected 'user_id<TAB>item item …', got {line[:80]!r}"
                )
            if user in seen:
                raise SchemaError(
                    f"pairs file {str(p)!r} line {lineno}: user {user!r} already has line {seen[user]}; "
                    "each user needs exactly one line"
                )
            seen[user] = lineno
            items = rest.split()
            if not items:
                empty += 1
                logger.warning("pairs line %d: user %r names no item; dropped", lineno, user)
                continue
            users.append((user, items))
    return users, empty


def _keep_latest(items: list[str]) -> list[str]:
    """Items with repeats removed, each at its latest position."""
    last = {it: i for i, it in enumerate(items)}
    return [it for i, it in enumerate(items) if last[it] == i]


def assign_splits(
    user_codes: np.ndarray, positions: np.ndarray, sizes: np.ndarray, protocol: str, seed: int
) -> np.ndarray:
    """Split name per interaction (see the module docstring for the protocols).

    Args:
        user_codes: ``[n]`` user number of each row, rows of a user contiguous.
        positions: ``[n]`` 0-based position of the row in its user's sequence.
        sizes: ``[n]`` number of items of the row's user.
        protocol: ``loo`` or ``random``.
        seed: random seed (``random`` only).

    Returns:
        ``[n]`` object array of ``train``/``valid``/``test``.
    """
    if protocol == "loo":
        rank = sizes - 1 - positions  # 0 = the user's last item
        hold = np.ones(len(sizes), np.int64)
    else:
        draws = np.random.default_rng(seed).random(len(user_codes))
        order = np.lexsort((draws, user_codes))
        rank = np.empty(len(order), np.int64)
        starts = np.r_[0, np.flatnonzero(np.diff(user_codes[order])) + 1]
        counts = np.diff(np.r_[starts, len(order)])
        rank[order] = np.arange(len(order)) - np.repeat(starts, counts)
        hold = np.maximum(1, np.rint(0.1 * sizes)).astype(np.int64)
    hold = np.where(sizes >= MIN_ITEMS_TO_SPLIT, hold, 0)
    part = np.where(rank < hold, 2, np.where(rank < 2 * hold, 1, 0))
    return np.asarray(SPLIT_NAMES, dtype=object)[part]


def load_microlens(
    src: str | Path,
    protocol: str = "loo",
    seed: int = 42,
    max_items_per_user: int = 0,
    strict: bool = False,
    expected_sha256: Mapping[str, str] | None = None,
) -> MicroLensData:
    """Read and convert the MicroLens-50k files in ``src``.

    Args:
        src: folder holding ``MicroLens-50k_pairs.tsv`` and ``MicroLens-50k_titles.csv``.
        protocol: ``loo`` (default) or ``random``.
        seed: seed of the ``random`` protocol (recorded either way).
        max_items_per_user: keep only each user's last N items (0: all; the paper's code uses 13).
        strict: a source sha256 other than expected raises instead of logging a warning.
        expected_sha256: file name → sha256 (default :data:`EXPECTED_SHA256`).

    Returns:
        :class:`MicroLensData`.

    Raises:
        ValueError: unknown ``protocol`` or a negative ``max_items_per_user``.
        SchemaError: a missing or malformed source file.
        DataError: a checksum mismatch with ``strict``, or no interaction left.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"`protocol` must be one of {list(PROTOCOLS)}, got {protocol!r}")
    if max_items_per_user < 0:
        raise ValueError(f"`max_items_per_user` must be >= 0 (0: no cut), got {max_items_per_user}")
    root = Path(src)
    expected = dict(EXPECTED_SHA256 if expected_sha256 is None else expected_sha256)
    sums = {name: sha256_file(root / name) for name in (PAIRS_FILE, TITLES_FILE) if (root / name).is_file()}
    mismatches = [name for name, digest in sums.items() if name in expected and expected[name] != digest]
    for name in mismatches:
        message = f"{str(root / name)!r} has sha256 {sums[name]}, expected {expected[name]} (not the original file?)"
        if strict:
            raise DataError(message + "; drop --strict to convert it anyway")
        logger.warning("%s", message)
    items = read_titles(root / TITLES_FILE)
    users, empty_users = read_pairs(root / PAIRS_FILE)
    known = set(items["item_id"])
    dropped = {
        "no_title": 0,
        "repeat": 0,
        "over_max_items": 0,
        "user_without_items": empty_users,
        "user_without_kept_items": 0,
    }
    user_col: list[str] = []
    item_col: list[str] = []
    for user, raw in users:
        titled = [it for it in raw if it in known]
        dropped["no_title"] += len(raw) - len(titled)
        kept = _keep_latest(titled)
        dropped["repeat"] += len(titled) - len(kept)
        if max_items_per_user and len(kept) > max_items_per_user:
            dropped["over_max_items"] += len(kept) - max_items_per_user
            kept = kept[-max_items_per_user:]
        if not kept:
            dropped["user_without_kept_items"] += 1
        user_col.extend([user] * len(kept))
        item_col.extend(kept)
    if not item_col:
        raise DataError(f"no interaction left in {str(root / PAIRS_FILE)!r} after drops {dropped}")
    codes, uniques = pd.factorize(pd.Series(user_col), sort=False)
    sizes_per_user = np.bincount(codes)
    starts = np.r_[0, np.cumsum(sizes_per_user)[:-1]]
    positions = np.arange(len(codes)) - starts[codes]
    split = assign_splits(codes, positions, sizes_per_user[codes], protocol, seed)
    inter = pd.DataFrame(
        {"user_id": user_col, "item_id": item_col, "timestamp": positions.astype(np.int64), "split": split}
    )
    used = set(item_col)
    part_rows = inter["split"].value_counts()
    counts = {
        "users": len(uniques),
        "items": len(items),
        "interactions": len(inter),
        "items_with_hashtags": int(sum(1 for c in items["categories"] if c)),
        "distinct_hashtags": len({t for c in items["categories"] for t in c}),
        "items_without_interactions": len(known - used),
        **{name: int(part_rows.get(name, 0)) for name in SPLIT_NAMES},
        "train_only_users": int((sizes_per_user < MIN_ITEMS_TO_SPLIT).sum()),
    }
    for reason, n in dropped.items():
        if n:
            log = logger.info if reason == "over_max_items" else logger.warning  # asked for vs found
            log("dropped %d %s (%s)", n, "users" if reason.startswith("user_") else "rows", reason)
    return MicroLensData(items, inter, counts, dropped, sums, mismatches, protocol, seed, max_items_per_user)
