"""Hypothesis strategies for what users type: names, aliases, versions, shares, windows, text."""

from __future__ import annotations

import string
from datetime import datetime, timedelta, timezone

from hypothesis import strategies as st

_IDENT = st.text(alphabet=string.ascii_lowercase + string.digits + "_-", min_size=1, max_size=12)

# Names people paste: empty, whitespace, unicode, very long, Unity Catalog three-level names,
# quotes and backticks that would break a filter string, control characters, look-alikes.
NASTY_NAMES = st.sampled_from([
    "", " ", "\t\n", "hard-agent ", " hard-agent", "HARD-AGENT", "hard-agent\x00", "hard'agent", 'hard"agent',
    "hard`agent", "hard\\agent", "hard-agent' OR '1'='1", "../../etc/passwd", "main.default.hard-agent",
    "main.default.", ".default.model", "a.b", "%", "_", "*", "ｈａｒｄ-agent", "hard-agent\u200b", "агент",
    "代理", "🤖", "x" * 300, "a" * 5000, "NULL", "None", "<script>alert(1)</script>",
])
UC_NAMES = st.builds(lambda a, b, c: f"{a}.{b}.{c}", _IDENT, _IDENT, _IDENT)
NAMES = st.one_of(NASTY_NAMES, UC_NAMES, st.text(max_size=40), st.text(min_size=256, max_size=700))

ALIASES = st.one_of(
    st.sampled_from(["", " ", "latest", "LATEST", "v1", "V22", "champion", " champion ", "Champion", "challenger",
                     "a" * 255, "a" * 256, "ch@mp", "chämp", "prod.blue", "prod/blue", "prod blue", "-", "_",
                     "a\nb", "🤖", "champion'", "v", "v1x"]),
    st.text(max_size=30),
)

VERSIONS = st.one_of(
    st.integers(min_value=-5, max_value=10**12),
    st.sampled_from(["1", "2", "3", "v1", "V2", " 2 ", "01", "0", "-1", "1.0", "1e3", "0x1", "²", "١", "٣", "Ⅲ",
                     "", "v", "1 2", "999999999999999999999999", "\x001"]),
    st.text(max_size=8),
)

PERCENTS = st.one_of(
    st.integers(min_value=-150, max_value=250),
    st.sampled_from([0, 100, 50, -0, 101, -1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.sampled_from(["50", "", None, 50.0, 33.3]),
)

FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(min_value=-10**6, max_value=10**6),
                   st.sampled_from([0.0, -0.0, 1.0, -1.0, 1e308, -1e-300, float("nan"), float("inf")]))

_ZONES = st.sampled_from([timezone.utc, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-11)), None])


def moments(now: datetime) -> st.SearchStrategy[datetime]:
    """Datetimes around ``now``: naive and aware, far past and future, exactly equal."""
    offsets = st.one_of(st.integers(min_value=-400 * 86400, max_value=400 * 86400),
                        st.sampled_from([0, 1, -1, 3600, -3600, 90 * 86400, 91 * 86400]))
    return st.builds(lambda s, tz: (now + timedelta(seconds=s)).replace(tzinfo=None) if tz is None
                     else (now + timedelta(seconds=s)).astimezone(tz), offsets, _ZONES)


FILTER_TEXT = st.one_of(
    st.sampled_from(["", "hard-agent", "x' OR '1'='1", 'x" OR "1"="1', "x`", "a\\", "\\'", "%", "_", "*",
                     "a\nb", "a\rb", "x" * 251, "hard-agent'--", "1; DROP TABLE runs", "🤖"]),
    st.text(max_size=40),
)


def one_bad_field(valid: dict, bad: dict) -> st.SearchStrategy[dict]:
    """The valid values (about a third of the examples, so accepted paths run too), or the valid
    values with exactly one field drawn from its bad-value strategy."""
    def broken(name: str) -> st.SearchStrategy[dict]:
        return st.fixed_dictionaries({**{k: v for k, v in valid.items() if k != name}, name: bad[name]})

    mutated = st.sampled_from(sorted(bad)).flatmap(broken)
    return st.one_of(st.fixed_dictionaries(valid), mutated, mutated)


@st.composite
def splits(draw, names: list[str]) -> list[tuple[str, int]]:
    """A valid split: some of ``names`` with whole shares adding up to 100."""
    chosen = draw(st.lists(st.sampled_from(names), min_size=1, max_size=len(names), unique=True))
    cuts = sorted(draw(st.lists(st.integers(0, 100), min_size=len(chosen) - 1, max_size=len(chosen) - 1)))
    bounds = [0, *cuts, 100]
    return [(name, bounds[i + 1] - bounds[i]) for i, name in enumerate(chosen)]


@st.composite
def mutated_splits(draw, names: list[str], foreign: list[str]) -> list[tuple[str, int]]:
    """A valid split, or one broken in one way: a share off, negative, >100, a duplicate or unknown arm, empty."""
    split = draw(splits(names))
    how = draw(st.sampled_from(["none", "none", "off", "negative", "over", "duplicate", "unknown", "empty", "drop"]))
    index = draw(st.integers(0, len(split) - 1))
    name, share = split[index]
    if how == "off":
        split[index] = (name, share + draw(st.sampled_from([-3, -1, 1, 2, 50])))
    elif how == "negative":
        split[index] = (name, -draw(st.integers(1, 100)))
    elif how == "over":
        split[index] = (name, draw(st.integers(101, 1000)))
    elif how == "duplicate":
        split.append((name, 0))
    elif how == "unknown":
        split.append((draw(st.sampled_from(foreign)), 0))
    elif how == "empty":
        split = []
    elif how == "drop" and len(split) > 1:
        split.pop(index)
    return split
