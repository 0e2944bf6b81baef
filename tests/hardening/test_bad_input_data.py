"""Bad input over uploaded datasets, the price table, monitoring filters and time windows, trace
ids and alert thresholds: typed errors with a message, the store unchanged, filters that cannot
be turned into a different query."""

from __future__ import annotations

import csv
import io
import json
import math
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from services import datasets, monitoring, pricing
from services import alerts
from services import trace_explorer
from services.errors import ValidationError
from tests.hardening.conftest import AGENT, DATASET, attempt, deep
from tests.hardening.strategies import FILTER_TEXT, FLOATS, NAMES, moments, one_bad_field

pytestmark = pytest.mark.slow

NOW = datetime.now(tz=timezone.utc).replace(microsecond=0)

# --- uploads ---------------------------------------------------------------------------------

_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)),
    lambda children: st.one_of(st.lists(children, max_size=3),
                               st.dictionaries(st.text(max_size=10), children, max_size=3)),
    max_leaves=8,
)
_KEYS = st.sampled_from(["inputs", "expectations", "tags", "question", "extra", "Inputs"])
_EXPECTATIONS = st.one_of(
    st.fixed_dictionaries({}, optional={"expected_facts": st.one_of(st.lists(st.text(max_size=10), max_size=3), _JSON),
                                        "required_tools": st.lists(st.text(max_size=8), max_size=2),
                                        "expected_response": st.one_of(st.text(max_size=20), _JSON)}),
    _JSON,
)
_ROW = st.one_of(
    # Rows shaped like MLflow's, with some fields wrong.
    st.fixed_dictionaries({"inputs": st.one_of(st.fixed_dictionaries({"question": st.one_of(st.text(max_size=30), _JSON)}),
                                               _JSON)},
                          optional={"expectations": _EXPECTATIONS,
                                    "tags": st.one_of(st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
                                                      _JSON)}),
    st.dictionaries(_KEYS, _JSON, max_size=3),
    _JSON,
)


def _as_csv(rows: list) -> bytes:
    """Rows written with the dotted header a user would export from a spreadsheet."""
    buffer = io.StringIO()
    columns = sorted({f"{head}.{key}" if isinstance(value, dict) else head
                      for row in rows if isinstance(row, dict)
                      for head, inner in row.items()
                      for key, value in ((inner.items() if isinstance(inner, dict) else [(None, inner)]))
                      if key is not None} or {"inputs.question"})
    writer = csv.writer(buffer)
    writer.writerow(columns)
    for row in rows:
        cells = []
        for column in columns:
            head, _, key = column.partition(".")
            value = (row.get(head) or {}).get(key) if isinstance(row, dict) and isinstance(row.get(head), dict) else None
            cells.append("" if value is None else value if isinstance(value, str) else json.dumps(value))
        writer.writerow(cells)
    return buffer.getvalue().encode()


_VALID_ROW = st.fixed_dictionaries(
    {"inputs": st.fixed_dictionaries({"question": st.text(min_size=1, max_size=30).filter(str.strip)})},
    optional={"expectations": st.fixed_dictionaries({}, optional={
        "expected_facts": st.lists(st.text(max_size=10), max_size=3), "expected_response": st.text(max_size=20)})},
)


@st.composite
def _uploads(draw):
    rows = draw(st.one_of(st.lists(_VALID_ROW, min_size=1, max_size=4), st.lists(_ROW, max_size=4)))
    fmt = draw(st.sampled_from(["json", "jsonl", "csv", "csv", "records", "bytes", "encoding", "TXT"]))
    name = draw(st.sampled_from(["data", "my data", "x.y", "../up", "données"]))
    if fmt == "json":
        return f"{name}.json", json.dumps(rows).encode()
    if fmt == "records":
        return f"{name}.JSON", json.dumps({"records": rows}).encode()
    if fmt == "jsonl":
        return f"{name}.jsonl", "\n".join(json.dumps(r) for r in rows).encode()
    if fmt == "csv":
        return f"{name}.csv", _as_csv(rows)
    if fmt == "encoding":
        text = json.dumps([{"inputs": {"question": "Où est ma commande ? 注文"}}], ensure_ascii=False)
        return f"{name}.json", text.encode(draw(st.sampled_from(["utf-16", "latin-1", "cp1252", "utf-32"])), "replace")
    if fmt == "TXT":
        return f"{name}.{draw(st.sampled_from(['txt', 'xlsx', '', 'csv.exe', 'json ']))}", b"inputs.question\nq\n"
    return f"{name}.{draw(st.sampled_from(['csv', 'json', 'jsonl']))}", draw(st.binary(max_size=200))


_EDGE_UPLOADS = [
    ("empty.csv", b""), ("empty.json", b""), ("empty.jsonl", b"\n\n"), ("header.csv", b"inputs.question\n"),
    ("deep.json", b"[" * 50_000), ("deep.jsonl", b"[" * 50_000), ("deep.csv", b"inputs\n" + b"[" * 50_000),
    ("bigint.json", b'[{"inputs": {"question": "q", "n": ' + b"9" * 5000 + b"}}]"),
    ("wide.csv", b"inputs.question\n" + b"x" * 200_000), ("nul.csv", b"inputs.question\nq\x00\n"),
    ("dup.csv", b"inputs.question,inputs.question\na,b\n"), ("mixed.csv", b'inputs,inputs.question\n[1],q\n'),
    ("bom.csv", "\ufeffinputs.question\nq\n".encode()), ("crlf.csv", b"inputs.question\r\nq\r\n"),
    ("extra.csv", b"inputs.question\nq,r\n"), ("rows.json", json.dumps([{"inputs": {"question": "q"}}] * 5001).encode()),
    ("big.json", b" " * (datasets.MAX_UPLOAD_BYTES + 1)), ("latin.csv", "inputs.question\ncafé\n".encode("latin-1")),
]


@settings(max_examples=250)
@given(upload=_uploads())
def test_uploads_are_parsed_or_refused_with_the_row_and_column(tallies, upload):
    tally = tallies("datasets.parse_upload")
    filename, content = upload
    try:
        rows = datasets.parse_upload(filename, content)
    except ValidationError as exc:
        tally.rejected(exc)
        assert str(exc).strip()
        return
    tally.ok()
    # Whatever is accepted is a list of MLflow evaluation records with a question each.
    assert rows and all(isinstance(r["inputs"]["question"], str) and r["inputs"]["question"].strip() for r in rows)
    assert datasets.validate_rows(rows) is rows
    if filename.lower().endswith((".json", ".jsonl")):
        # JSON uploads keep every question exactly as written.
        sent = json.loads(content) if filename.lower().endswith(".json") else [
            json.loads(line) for line in content.decode().splitlines() if line.strip()]
        sent = sent["records"] if isinstance(sent, dict) else sent
        assert [r["inputs"]["question"] for r in rows] == [r["inputs"]["question"] for r in sent]


@pytest.mark.parametrize("filename,content", _EDGE_UPLOADS, ids=[f for f, _ in _EDGE_UPLOADS])
def test_edge_uploads_are_typed(tallies, filename, content):
    tally = tallies("datasets.parse_upload")
    try:
        rows = datasets.parse_upload(filename, content)
    except ValidationError as exc:
        tally.rejected(exc)
        assert str(exc).strip()
    else:
        tally.ok()
        assert filename in ("bom.csv", "crlf.csv", "nul.csv"), f"{filename} accepted: {rows[:2]}"
        assert rows[0]["inputs"]["question"].startswith("q")


_GOOD_ROWS = [{"inputs": {"question": "Where is order 7?"}, "expectations": {"expected_facts": ["shipped"]}}]


@settings(max_examples=40)
@given(case=one_bad_field(
    {"name": st.text(alphabet="abcdefghij-", min_size=3, max_size=12).map(lambda n: f"up-{n}"),
     "rows": st.just(_GOOD_ROWS), "experiment": st.just("store")},
    {"name": st.one_of(NAMES, st.just(DATASET), st.just(f" {DATASET} ")), "rows": st.lists(_ROW, max_size=3),
     "experiment": st.sampled_from(["", "999999", "abc", "-1", "0", " "])},
))
def test_saving_a_dataset_refuses_bad_names_rows_and_experiments(hard_store, tallies, case):
    tally = tallies("datasets.save_dataset")
    experiment = hard_store.experiment_id if case["experiment"] == "store" else case["experiment"]
    rows = deep(case["rows"])
    dataset_id, exc = attempt(tally, hard_store, lambda: datasets.save_dataset(case["name"], rows, experiment,
                                                                              hard_store.settings),
                              what=f"save_dataset({case['name']!r}, experiment {experiment!r})")
    assert rows == case["rows"], "save_dataset changed the caller's rows"
    if exc is None:
        stored = datasets.load_dataset_rows(case["name"].strip(), hard_store.settings)
        assert [r["inputs"] for r in stored] == [r["inputs"] for r in case["rows"]]


# --- price table -------------------------------------------------------------------------------

_PRICE = st.one_of(
    st.fixed_dictionaries({"input_per_mtok": FLOATS, "output_per_mtok": FLOATS},
                          optional={"cached_input_per_mtok": st.one_of(FLOATS, st.just(""), st.none())}),
    st.fixed_dictionaries({"input_per_mtok": st.one_of(st.text(max_size=6), st.none(), st.booleans()),
                           "output_per_mtok": st.just(1.0)}),
    st.one_of(st.none(), st.integers(), st.text(max_size=5), st.lists(st.integers(), max_size=2)),
)


@settings(max_examples=120)
@given(table=st.dictionaries(st.one_of(st.sampled_from(["gpt-4o", " gpt-4o", "gpt-4o ", "", "  ", "模型", "x" * 300]),
                                       st.text(max_size=10)), _PRICE, max_size=4))
def test_price_table_edits_are_checked_before_they_are_saved(hard_store, tallies, table):
    tally = tallies("pricing.save_prices")
    saved, exc = attempt(tally, hard_store, lambda: pricing.save_prices(hard_store.settings, table),
                         what="save_prices")
    if exc is None:
        assert pricing.load_prices(hard_store.settings) == saved
        for price in saved.values():
            for value in (price.input_per_mtok, price.output_per_mtok, price.cached_input_per_mtok):
                assert math.isfinite(value) and value >= 0


# --- monitoring filters and windows --------------------------------------------------------------

_STATUS = st.sampled_from([None, monitoring.Status.OK, monitoring.Status.ERROR])


@st.composite
def _queries(draw, store):
    bad = draw(st.sampled_from(["none", "none", "window", "tags"]))
    # The store's traces are written when the fixture runs, which in a long suite is minutes after
    # this module (and NOW) was imported: the window ends after them, not after NOW.
    later = datetime.now(tz=timezone.utc).replace(microsecond=0)
    start, end = later - timedelta(days=1), later + timedelta(minutes=1)
    if bad == "window":
        start, end = draw(moments(NOW)), draw(moments(NOW))
    tags = {"agent": AGENT, "version": None, "alias": None, "endpoint": None, "arm": None}
    if bad == "tags":
        key = draw(st.sampled_from(sorted(tags)))
        tags[key] = draw(FILTER_TEXT)
    return bad, monitoring.TraceQuery((store.experiment_id,), start, end, status=draw(_STATUS), **tags)


@settings(max_examples=60)
@given(data=st.data())
def test_filters_and_windows_are_refused_or_match_only_what_they_say(hard_store, tallies, data):
    bad, query = data.draw(_queries(hard_store))
    tally = tallies("trace_explorer.count_matching")
    count, exc = attempt(tally, hard_store, lambda: trace_explorer.count_matching(query, hard_store.settings),
                         what=f"count_matching({query})", changes_when_accepted=False)
    if exc is not None:
        return
    # A filter value is a value: quotes, backslashes or SQL in it never widen the match.
    page, exc = attempt(tallies("trace_explorer.search_page"), hard_store,
                        lambda: trace_explorer.search_page(trace_explorer.ExplorerQuery(query), page_size=50,
                                                       settings=hard_store.settings),
                        what="search_page", changes_when_accepted=False)
    assert exc is None, exc
    assert len(page.rows) == count
    for column, value in (("agent", query.agent), ("version", query.version), ("alias", query.alias),
                          ("endpoint", query.endpoint), ("arm", query.arm)):
        if value:
            assert (page.rows[column] == value).all(), f"{column}={value!r} matched {set(page.rows[column])}"
    if bad == "none" and not query.status:
        assert count == len(hard_store.trace_ids)


@settings(max_examples=25)
@given(split=st.one_of(st.sampled_from(list(monitoring.Split)), st.text(max_size=8)),
       groups=st.lists(FILTER_TEXT, max_size=3), interval=st.one_of(st.none(), st.integers(-10, 100_000)),
       window=st.sampled_from([timedelta(hours=1), timedelta(days=1), timedelta(days=89)]))
def test_chart_requests_are_refused_or_answered_without_writing(hard_store, tallies, split, groups, interval, window):
    query = monitoring.TraceQuery((hard_store.experiment_id,), NOW - window, NOW, agent=AGENT)
    data, exc = attempt(tallies("monitoring.monitoring_data"), hard_store,
                        lambda: monitoring.monitoring_data(query, split, groups, interval_seconds=interval,
                                                           settings=hard_store.settings),
                        what="monitoring_data", changes_when_accepted=False)
    if exc is None:
        assert list(data.series.columns) == list(monitoring.SERIES_COLUMNS)
        assert (data.totals["requests"] >= 0).all()


@settings(max_examples=60)
@given(low=st.one_of(st.none(), st.integers(-100, 10**9)), high=st.one_of(st.none(), st.integers(-100, 10**9)),
       size=st.integers(-5, 600), feedback=st.sampled_from(list(monitoring.FeedbackFilter)),
       name=st.one_of(st.just("thumbs_up"), FILTER_TEXT),
       # Tokens come from the previous page, not from typing; ASCII garbage stands for a stale or edited one.
       token=st.one_of(st.none(), st.text(alphabet=st.characters(max_codepoint=127), max_size=30)))
@example(low=None, high=None, size=10, feedback=monitoring.FeedbackFilter.ANY, name="thumbs_up", token="not-a-token")
def test_explorer_refuses_bad_ranges_pages_and_tokens(hard_store, tallies, low, high, size, feedback, name, token):
    explorer = trace_explorer.ExplorerQuery(monitoring.TraceQuery((hard_store.experiment_id,), NOW - timedelta(days=1), NOW),
                                        low, high, feedback, name)
    attempt(tallies("trace_explorer.search_page"), hard_store,
            lambda: trace_explorer.search_page(explorer, page_size=size, page_token=token, settings=hard_store.settings),
            what="search_page", changes_when_accepted=False)


@settings(max_examples=60)
@given(trace_id=st.one_of(FILTER_TEXT, NAMES, st.sampled_from(["tr-" + "0" * 32, "tr-", "tr-zz", " tr-1 ", "real"])))
def test_trace_detail_refuses_ids_that_are_not_traces(hard_store, tallies, trace_id):
    trace_id = hard_store.trace_ids[0] if trace_id == "real" else trace_id
    attempt(tallies("trace_explorer.trace_detail"), hard_store, lambda: trace_explorer.trace_detail(trace_id, hard_store.settings),
            what=f"trace_detail({trace_id!r})", changes_when_accepted=False)


_THRESHOLD = st.one_of(st.none(), FLOATS)


@settings(max_examples=80)
@given(agent=st.one_of(st.just(AGENT), st.just("*"), NAMES),
       values=st.fixed_dictionaries({"p95_latency_ms": _THRESHOLD, "error_rate": _THRESHOLD, "daily_cost": _THRESHOLD,
                                     "min_feedback_score": _THRESHOLD,
                                     "feedback_name": st.one_of(st.just("thumbs_up"), FILTER_TEXT)}))
def test_alert_thresholds_are_checked_before_they_are_saved(hard_store, tallies, agent, values):
    thresholds = alerts.AlertThresholds(**values)
    saved, exc = attempt(tallies("alerts.save_thresholds"), hard_store,
                         lambda: alerts.save_thresholds(hard_store.settings, agent, thresholds),
                         what="save_thresholds")
    if exc is None:
        assert alerts.load_thresholds(hard_store.settings)[agent] == thresholds


@pytest.mark.parametrize("values", [{"p95_latency_ms": "5"}, {"error_rate": "0.1"}, {"feedback_name": None}])
def test_thresholds_of_the_wrong_type_are_refused(hard_store, values):
    before = hard_store.snapshot()
    with pytest.raises(ValidationError):
        alerts.save_thresholds(hard_store.settings, AGENT, alerts.AlertThresholds(**values))
    hard_store.assert_unchanged(before, "thresholds of the wrong type")
