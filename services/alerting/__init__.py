"""Alert rules on live traffic, their incidents, and the notifications they send.

A rule watches one measure (error rate, p95 latency, cost per request, a live scorer's pass rate,
a thumbs-down rate) over a window of traffic of one agent, version, endpoint or arm, and fires only
when the window holds at least ``min_sample`` requests (or assessed traces): three requests never
page anyone. ``evaluate_and_notify`` is the periodic task the background worker runs.

Everything is team state (``services.team_state``), so the app, a second worker and a restarted
worker share it:

- ``rules``: ``alert-rule:<name>`` records (measures, validation, save / delete by operators).
- ``channels``: ``alert-channel:<name>`` records (what apprise says the URL is and a fingerprint,
  never the URL: that is a secret, ``services.notify``), sending, one-off notices and the
  ``alert-deliveries`` history (no URL).
- ``measuring``: a rule's measure over its window and the sample it rests on.
- ``evaluation``: ``alert-incident:<rule>`` transitions, claimed before anything is sent, and the
  notifications each incident still owes.
- ``state``: ``snapshot``, one read of all of it for the Alerts page.
"""

from services.alerting.channels import (
    NOTICE_KEY,
    Channel,
    delete_channel,
    delivery_history,
    list_channels,
    notify_channels,
    save_channel,
    send_test_alert,
)
from services.alerting.evaluation import (
    EvaluationReport,
    RuleOutcome,
    State,
    evaluate_and_notify,
)
from services.alerting.measuring import (
    Measurement,
    breached,
    measure,
)
from services.alerting.rules import (
    CHANNEL_KEY,
    DELIVERIES_KEY,
    EVALUATOR,
    HISTORY_SIZE,
    INCIDENT_KEY,
    LEASE,
    MAX_SCANNED_TRACES,
    MIN_SAMPLE,
    RETRY_AFTER,
    RULE_KEY,
    WINDOW_MINUTES,
    AlertRule,
    Measure,
    delete_rule,
    is_thumbs_down,
    list_rules,
    parse_criterion,
    rule_from_form,
    rule_versions,
    rules_for,
    save_rule,
    validate_rule,
    with_channels,
)
from services.alerting.state import (
    AlertSnapshot,
    change_history,
    incidents,
    snapshot,
)

__all__ = [
    "CHANNEL_KEY",
    "DELIVERIES_KEY",
    "EVALUATOR",
    "HISTORY_SIZE",
    "INCIDENT_KEY",
    "LEASE",
    "MAX_SCANNED_TRACES",
    "MIN_SAMPLE",
    "NOTICE_KEY",
    "RETRY_AFTER",
    "RULE_KEY",
    "WINDOW_MINUTES",
    "AlertRule",
    "AlertSnapshot",
    "Channel",
    "EvaluationReport",
    "Measure",
    "Measurement",
    "RuleOutcome",
    "State",
    "breached",
    "change_history",
    "delete_channel",
    "delete_rule",
    "delivery_history",
    "evaluate_and_notify",
    "incidents",
    "is_thumbs_down",
    "list_channels",
    "list_rules",
    "measure",
    "notify_channels",
    "parse_criterion",
    "rule_from_form",
    "rule_versions",
    "rules_for",
    "save_channel",
    "save_rule",
    "send_test_alert",
    "snapshot",
    "validate_rule",
    "with_channels",
]
