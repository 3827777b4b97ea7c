"""Variant assignment: deterministic, sticky, shares honoured over 100k users, overrides, validation."""

from __future__ import annotations

import hashlib

import pytest

from recfuse.errors import ConfigError, InvalidRequestError
from recfuse.variants import VariantAssigner, assign_variant, parse_shares, user_bucket, validate_shares

USERS = [f"user-{i}" for i in range(100_000)]


def test_bucket_is_the_documented_salted_sha256() -> None:
    digest = hashlib.sha256(b"exp-2026\x1fuser-1").digest()
    assert user_bucket("user-1", "exp-2026") == int.from_bytes(digest[:8], "big") % 10_000
    # golden values: a change here reshuffles every live experiment
    assert user_bucket("user-1", "exp-2026") == 3861
    assert user_bucket("42", "salt") == 620


def test_assignment_is_deterministic_and_sticky_across_instances() -> None:
    shares = {"attention": 0.9, "concat": 0.1}
    first = VariantAssigner("exp", shares).assign_many(USERS[:5000])
    second = [assign_variant(u, "exp", dict(shares)) for u in USERS[:5000]]
    assert first == second
    assert VariantAssigner("exp", shares).assign_many(USERS[:5000]) == first


@pytest.mark.parametrize(
    "shares",
    [{"attention": 0.9, "concat": 0.1}, {"a": 0.5, "b": 0.3, "c": 0.2}, {"a": 0.99, "b": 0.01}],
)
def test_shares_within_tolerance_over_100k_users(shares: dict[str, float]) -> None:
    got = VariantAssigner("exp-shares", shares).assign_many(USERS)
    for name, share in shares.items():
        frac = got.count(name) / len(USERS)
        sd = (share * (1 - share) / len(USERS)) ** 0.5
        assert abs(frac - share) < 5 * sd + 1e-4, (name, frac, share)


def test_zero_share_variant_gets_nobody_and_full_share_gets_everybody() -> None:
    got = VariantAssigner("exp", {"a": 1.0, "b": 0.0}).assign_many(USERS[:20_000])
    assert set(got) == {"a"}


def test_new_salt_reshuffles_users() -> None:
    shares = {"a": 0.5, "b": 0.5}
    x = VariantAssigner("salt-1", shares).assign_many(USERS[:20_000])
    y = VariantAssigner("salt-2", shares).assign_many(USERS[:20_000])
    agree = sum(p == q for p, q in zip(x, y)) / 20_000
    assert 0.47 < agree < 0.53


def test_ramping_up_the_last_variant_only_moves_users_into_it() -> None:
    before = VariantAssigner("ramp", {"attention": 0.9, "concat": 0.1}).assign_many(USERS[:20_000])
    after = VariantAssigner("ramp", {"attention": 0.8, "concat": 0.2}).assign_many(USERS[:20_000])
    assert all(a == "concat" for b, a in zip(before, after) if b == "concat")
    moved = sum(b != a for b, a in zip(before, after)) / 20_000
    assert 0.08 < moved < 0.12


def test_override_wins_and_must_be_a_configured_variant() -> None:
    shares = {"attention": 0.9, "concat": 0.1}
    assert all(assign_variant(u, "exp", shares, override="concat") == "concat" for u in USERS[:100])
    assert assign_variant("u", "exp", shares, override="") == assign_variant("u", "exp", shares)
    with pytest.raises(InvalidRequestError, match=r"override 'gated' is not a configured variant.*attention"):
        assign_variant("u", "exp", shares, override="gated")


def test_empty_user_id_is_rejected() -> None:
    with pytest.raises(InvalidRequestError, match="`user_id` must be a non-empty string"):
        assign_variant("", "exp", {"a": 1.0})


@pytest.mark.parametrize(
    ("shares", "match"),
    [
        ({}, "must map variant names"),
        ({"a": 0.5, "b": 0.4}, r"must sum to 1, got 0\.9"),
        ({"a": 1.2, "b": -0.2}, r"`shares\['a'\]` must be in \[0, 1\], got 1\.2"),
        ({"": 1.0}, "names must be non-empty"),
        ({"a": float("nan")}, r"`shares\['a'\]` must be a number"),
        ({"a": "1"}, r"`shares\['a'\]` must be a number"),
    ],
)
def test_invalid_shares_raise_naming_the_problem(shares: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        validate_shares(shares)  # type: ignore[arg-type]


def test_parse_shares_from_command_line_text() -> None:
    assert parse_shares("attention=0.9, concat=0.1") == {"attention": 0.9, "concat": 0.1}
    with pytest.raises(ConfigError, match="part 'attention' must be NAME=SHARE"):
        parse_shares("attention,concat=0.1")
    with pytest.raises(ConfigError, match="share 'x' is not a number"):
        parse_shares("attention=x")
