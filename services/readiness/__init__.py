"""Release readiness: an automatic deployment checklist per version, shared by the UI and CI.

Each item is computed from MLflow and the backend and says pass / fail / unknown, why, and the
one action that fixes it. Items listed as *required* (registered-model tag
``agentops.readiness.required``, default: the gate and the load check) block a promotion when
they fail, exactly like a failing gate rule, with the same override-with-reason path.

The checks of the logged model itself (signature, input example, requirements, the load check in
a separate process) are in ``services.readiness_checks``; live traffic (evaluation rows left out)
in ``services.version_traffic``; the gate in ``services.gates``.

- ``report``: ``ReadinessCheck``, ``ReadinessReport`` and the required items.
- ``context``: what is read once per agent; ``items``: the items computed from it.
- ``checklist``: ``assess`` and ``assess_versions``.
"""

from services.readiness.checklist import (
    assess,
    assess_versions,
)
from services.readiness.report import (
    ALIAS_TRACE_TAG,
    DEFAULT_REQUIRED,
    MIN_DISTINCT_SHARE,
    MIN_ROWS,
    REQUIRED_TAG,
    STAGING_ALIASES,
    ReadinessCheck,
    ReadinessReport,
    check_items,
    parse_required,
    set_required_items,
)
from services.readiness_checks import (  # the checklist's vocabulary
    LOAD_TIMEOUT_S,
    TITLES,
    Item,
    LoadCheckResult,
    Progress,
    Verdict,
    check_load,
    load_item,
    model_checks,
    requirements_check,
    unpinned_requirements,
)

__all__ = [
    "ALIAS_TRACE_TAG",
    "DEFAULT_REQUIRED",
    "LOAD_TIMEOUT_S",
    "MIN_DISTINCT_SHARE",
    "MIN_ROWS",
    "REQUIRED_TAG",
    "STAGING_ALIASES",
    "TITLES",
    "Item",
    "LoadCheckResult",
    "Progress",
    "ReadinessCheck",
    "ReadinessReport",
    "Verdict",
    "assess",
    "assess_versions",
    "check_items",
    "check_load",
    "load_item",
    "model_checks",
    "parse_required",
    "requirements_check",
    "set_required_items",
    "unpinned_requirements",
]
