"""Decoding usage feed entries: ``UsageDecoder`` gives what ``json.loads`` + ``from_payload`` give.

The decoder reads the text ``feed.append`` stores without building JSON objects; every case
here compares it with the plain decoding (``json.loads``, then ``BucketState.from_payload`` per
bucket) of the same text: canonical entries written through the feed on each database, texts in
other forms (which take the JSON path), and generated bucket states.
"""

from __future__ import annotations

import decimal
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from allotment.ledger.storage import feed, usage
from allotment.ledger.storage.engine import Ledger
from allotment.ledger.storage.usage import BucketState, UsageDecoder

NS = "team-a"
MINUTE = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
AT = datetime(2026, 11, 1, 12, 0, 41, 120034, tzinfo=UTC)


def plain(text: str) -> list[BucketState]:
    """Decode as the feed's readers did before ``UsageDecoder``."""
    return [BucketState.from_payload(b) for b in json.loads(text).get("buckets", ())]


def state(**changes: Any) -> BucketState:
    fields: dict[str, Any] = {
        "meter_id": "01M86DFVSC0V5PZXF2V293NSG0",
        "meter_slug": "tokens",
        "subject": "customer-1",
        "groups": (),
        "minute": MINUTE,
        "event_count": 3,
        "value_sum": Decimal("7"),
    }
    fields.update(changes)
    return BucketState(**fields)


CANONICAL = [
    pytest.param([], id="no-buckets"),
    pytest.param([state()], id="sum-without-latest"),
    pytest.param([state(value_sum=Decimal("0.000000001"))], id="fractional-amount"),
    pytest.param([state(value_sum=Decimal("0"), event_count=0)], id="zero-amount"),
    pytest.param([state(value_sum=Decimal("-2.50"))], id="negative-amount-trailing-zero"),
    pytest.param(
        [state(value_sum=Decimal("123456789012345678901234567890.123456789"))], id="large-amount"
    ),
    pytest.param(
        [state(latest_time=AT, latest_value=Decimal("0.1"))], id="latest-with-microseconds"
    ),
    pytest.param(
        [state(latest_time=MINUTE + timedelta(seconds=5), latest_value=Decimal("0"))],
        id="latest-whole-seconds-zero-value",
    ),
    pytest.param([state(groups=(("model", "gpt-4"), ("region", "eu")))], id="group-by-values"),
    pytest.param([state(groups=(("", ""),))], id="empty-group-key-and-value"),
    pytest.param(
        [state(meter_slug="users", distinct=frozenset({"alice", "bob", ""}))],
        id="unique-count-distinct-values",
    ),
    pytest.param([state(subject="café")], id="non-ascii-subject-escaped"),
    pytest.param([state(subject='quote"d\\sub')], id="escaped-quote-and-backslash"),
    pytest.param([state(groups=(("model", 'a,b":"c'),))], id="separator-like-group-value"),
    pytest.param(
        [state(groups=(("", ","), ("0", ""), ("k", ":,")))], id="group-values-with-separators"
    ),
    pytest.param(
        [state(distinct=frozenset({",", "", ":", "a,b"}))], id="distinct-values-with-separators"
    ),
    pytest.param(
        [state(subject=f"sub-{n}", event_count=n, value_sum=Decimal(n) / 8) for n in range(60)],
        id="a-commit-of-sixty",
    ),
]


@pytest.mark.parametrize("states", CANONICAL)
def test_entries_written_through_the_feed_decode_as_plain_json(
    ledger: Ledger, states: list[BucketState]
) -> None:
    payload = {"buckets": [s.to_payload() for s in states]}
    with ledger.write() as conn:
        feed.append(conn, NS, [feed.Change(usage.USAGE_CHANGE, payload)], recorded_at=MINUTE)
    with ledger.read() as conn:
        (entry,) = feed.read_feed_texts(conn, NS, after=0)
        (record,) = feed.read_feed(conn, NS, after=0)
    assert record == entry.decoded()
    decoded = UsageDecoder().decode(entry.payload)
    assert decoded == plain(entry.payload) == states
    assert [vars(d) for d in decoded] == [vars(s) for s in states]


BUCKET = (
    '{"distinct":[],"eventCount":1,"groups":{},"latestTime":null,"latestValue":null,'
    '"meter":"tokens","meterId":"m1","minute":"2026-11-01T12:00:00Z","subject":"s","valueSum":"1"}'
)

OTHER_FORMS = [
    pytest.param("{}", id="no-buckets-key"),
    pytest.param('{"buckets":[]}', id="empty-canonical"),
    pytest.param('{"buckets": [' + BUCKET + "]}", id="space-after-colon"),
    pytest.param('{"buckets":[' + BUCKET + "," + BUCKET + "]}", id="two-canonical"),
    pytest.param('{"buckets":[' + BUCKET.replace('"1"}', "1.5}") + "]}", id="amount-as-number"),
    pytest.param('{"buckets":[' + BUCKET.replace('"s"', '"\\u0073"') + "]}", id="escaped-subject"),
    pytest.param(
        '{"buckets":[' + BUCKET.replace("12:00:00Z", "13:00:00+01:00") + "]}",
        id="instant-with-offset",
    ),
    pytest.param(
        '{"buckets":[' + BUCKET.replace("12:00:00Z", "12:00:00.5Z") + "]}",
        id="instant-short-fraction",
    ),
    pytest.param(
        '{"buckets":[' + BUCKET.replace("12:00:00Z", "12:00:00.1234567Z") + "]}",
        id="instant-beyond-microseconds",
    ),
    pytest.param(
        '{"buckets":[' + BUCKET.replace('"groups":{}', '"groups":{"a":"1","a":"2"}') + "]}",
        id="repeated-group-key",
    ),
    pytest.param(
        '{"buckets":[' + BUCKET + "," + BUCKET.replace('"s"', '"\\u0073"') + "]}",
        id="canonical-then-escaped",
    ),
    pytest.param('{"buckets":[' + BUCKET + "]} ", id="trailing-space"),
    pytest.param('{"buckets":[' + BUCKET + '],"x":1}', id="extra-key"),
]


@pytest.mark.parametrize("text", OTHER_FORMS)
def test_other_forms_decode_as_plain_json(text: str) -> None:
    assert UsageDecoder().decode(text) == plain(text)


REFUSED = [
    pytest.param('{"buckets":[' + BUCKET + "]", id="truncated"),
    pytest.param('{"buckets":[' + BUCKET, id="unclosed"),
    pytest.param('{"buckets":[', id="no-bucket-unclosed"),
    pytest.param('{"buckets":[' + BUCKET + ",]}", id="trailing-comma"),
    pytest.param('{"buckets":[' + BUCKET + "]}x", id="trailing-garbage"),
    pytest.param('{"buckets":[' + BUCKET.replace("12:00:00Z", "12:00:00") + "]}", id="naive"),
    pytest.param('{"buckets":[' + BUCKET.replace("11-01", "13-01") + "]}", id="month-13"),
    pytest.param('{"buckets":[' + BUCKET.replace('"1"}', '"x"}') + "]}", id="not-an-amount"),
    pytest.param('{"buckets":[' + BUCKET.replace('"s"', '"a\x01"') + "]}", id="control-char"),
]


@pytest.mark.parametrize("text", REFUSED)
def test_malformed_texts_fail_as_plain_json_fails(text: str) -> None:
    with pytest.raises(Exception) as plain_error:
        plain(text)
    with pytest.raises(type(plain_error.value)):
        UsageDecoder().decode(text)


def test_states_are_decoded_one_at_a_time() -> None:
    # The sidecar applies an entry's states as they are decoded: a group commit of thousands
    # of states is decoded across turns of its event loop, not in one.
    text = '{"buckets":[' + BUCKET + "," + BUCKET.replace('"1"}', '"x"}') + "]}"
    states = UsageDecoder().states(text)
    assert next(states) == plain('{"buckets":[' + BUCKET + "]}")[0]
    with pytest.raises(decimal.InvalidOperation):
        next(states)


def test_a_decoder_reused_across_entries_gives_each_its_own_states() -> None:
    decoder = UsageDecoder()
    first = [
        state(value_sum=Decimal("0")),
        state(subject="b", latest_time=AT, latest_value=Decimal("1")),
    ]
    second = [state(value_sum=Decimal("0.0"), groups=(("m", "x"),))]
    for states in (first, second, first):
        text = json.dumps(
            {"buckets": [s.to_payload() for s in states]}, separators=(",", ":"), sort_keys=True
        )
        decoded = decoder.decode(text)
        assert decoded == plain(text)
        assert [str(d.value_sum) for d in decoded] == [str(s.value_sum) for s in states]


#: Texts the ledger writes as they are (separators included), and any text (escaped or not).
_plain_text = st.text(st.sampled_from("ab-_0 ,:{}[]"), max_size=8)
_any_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=8)
_instant = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)
_amount = st.decimals(allow_nan=False, allow_infinity=False, places=None)


def _states(text: st.SearchStrategy[str]) -> st.SearchStrategy[list[BucketState]]:
    state = st.builds(
        BucketState,
        meter_id=text,
        meter_slug=text,
        subject=text,
        groups=st.dictionaries(text, text, max_size=3).map(lambda d: tuple(sorted(d.items()))),
        minute=_instant,
        event_count=st.integers(min_value=0, max_value=10**12),
        value_sum=_amount,
        latest_time=st.none() | _instant,
        latest_value=st.none() | _amount,
        distinct=st.frozensets(text, max_size=3),
    )
    return st.lists(state, max_size=5)


@given(_states(_plain_text) | _states(_any_text))
def test_generated_states_decode_as_plain_json(states: list[BucketState]) -> None:
    text = json.dumps(
        {"buckets": [s.to_payload() for s in states]}, separators=(",", ":"), sort_keys=True
    )
    assert UsageDecoder().decode(text) == plain(text)


def test_the_ledgers_own_text_is_read_without_json_objects(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    states = [
        state(groups=(("model", "gpt-4"),), latest_time=AT, latest_value=Decimal("2.5")),
        state(subject="customer-2", distinct=frozenset({"a", "b"})),
    ]
    text = json.dumps(
        {"buckets": [s.to_payload() for s in states]}, separators=(",", ":"), sort_keys=True
    )

    def refuse(*_args: object, **_kwargs: object) -> object:
        raise AssertionError("the canonical text went through json.loads")

    monkeypatch.setattr(json, "loads", refuse)
    assert UsageDecoder().decode(text) == states


def test_more_distinct_instants_and_amounts_than_a_decoder_keeps() -> None:
    decoder = UsageDecoder()
    states = [
        state(
            subject=f"sub-{n % 7}",
            groups=(("n", str(n)),),
            latest_time=AT + timedelta(microseconds=n),
            latest_value=Decimal(n) / 100,
            value_sum=Decimal(n),
        )
        for n in range(5000)
    ]
    for chunk in range(0, 5000, 1000):
        text = json.dumps(
            {"buckets": [s.to_payload() for s in states[chunk : chunk + 1000]]},
            separators=(",", ":"),
            sort_keys=True,
        )
        assert decoder.decode(text) == states[chunk : chunk + 1000]
