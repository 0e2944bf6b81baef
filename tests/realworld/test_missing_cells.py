"""Monitoring on the real-world workspace, where values are missing (AppTest): a dash in every such cell.

Traces with no model id (no agent or version), failed calls (no token usage) and an agent without
traffic: none of them shows None, nan, NaT or <NA> in a table.
"""

from __future__ import annotations

from streamlit.testing.v1 import AppTest

from components.tables import DASH
from tests.harness.app_page import open_page
from tests.realworld.workspace import UNICODE_AGENT

BAD = {"None", "nan", "NaN", "NaT", "<NA>"}


def _bad_cells(app: AppTest) -> list[str]:
    return [str(v) for d in app.dataframe for v in d.value.to_numpy().ravel() if str(v) in BAD]


def test_monitoring_tables_show_a_dash_where_values_are_missing(on_realworld):
    app = open_page("pages/monitoring.py", timeout=120)
    explorer = next(d.value for d in app.dataframe if "trace_id" in d.value.columns).set_index("trace_id")
    # All the traces of the window: the unlinked ones have no agent or version, and say why.
    assert set(on_realworld.unlinked_trace_ids) <= set(explorer.index)
    for trace_id in on_realworld.unlinked_trace_ids:
        if trace_id in explorer.index:
            row = explorer.loc[trace_id]
            assert (row["agent"], row["version"], row["model_id"]) == (DASH, DASH, DASH)
            assert row["link"] not in BAD and row["link"] != DASH
    failed = [t for v in on_realworld.agents[UNICODE_AGENT].versions.values() for t in v.trace_ids[:v.errors]]
    shown_failed = [t for t in failed if t in explorer.index]
    assert shown_failed, "the first page should hold some of the failed calls"
    assert all(explorer.loc[t, "input_tokens"] == DASH for t in shown_failed)
    assert not _bad_cells(app)

    app.selectbox(key="mon_agent").set_value(UNICODE_AGENT).run()
    app.selectbox(key="mon_split").set_value("Alias").run()
    assert not app.exception
    assert next(d.value for d in app.dataframe if "requests" in d.value.columns) is not None
    assert not _bad_cells(app)
