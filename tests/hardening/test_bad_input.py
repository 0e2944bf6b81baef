"""Bad input over registry aliases and promotion, versions, traffic splits, AI Gateway weights,
readiness items and test traffic.

Every refusal must be a typed ``AgentOpsError`` with a message and leave the store (every
table row, every config file) exactly as it was; accepted input must leave the registry, the
endpoint config and the audit trail agreeing with each other.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from services import audit, gates, readiness, releases, serving, traffic, versions
from services.serving import ai_gateway
from services.errors import BackendUnavailableError, ConflictError, ValidationError
from services.gates import GateRule, RuleKind
from services.promotion import PromotionRequest, RollbackRequest, Seen
from services.releases import Drift
from services.settings import load_settings
from tests.hardening.conftest import AGENT, ENDPOINT, attempt
from tests.hardening.strategies import ALIASES, FLOATS, NAMES, PERCENTS, VERSIONS, mutated_splits, one_bad_field

pytestmark = pytest.mark.slow


# --- pure validators against an oracle -------------------------------------------------------


@settings(max_examples=300)
@given(value=VERSIONS)
@example("²")
@example("١")
def test_check_version_accepts_positive_whole_numbers_only(tallies, value):
    tally = tallies("versions.check_version")
    text = str(value).strip().removeprefix("v")
    valid = text.isascii() and text.isdigit() and int(text) >= 1
    try:
        number = versions.check_version(value)
    except ValidationError as exc:
        tally.rejected(exc)
        assert not valid, f"{value!r} is a version number but was refused"
        assert repr(value) in str(exc)
        return
    tally.ok()
    assert valid and number == str(int(text)), f"{value!r} accepted as {number!r}"


@settings(max_examples=300)
@given(alias=ALIASES)
def test_check_alias_matches_what_mlflow_accepts(tallies, alias):
    tally = tallies("releases.check_alias")
    stripped = (alias or "").strip()
    import re

    valid = (bool(re.fullmatch(r"[A-Za-z0-9_-]{1,255}", stripped)) and stripped.lower() != "latest"
             and not re.fullmatch(r"[vV]\d+", stripped))
    try:
        checked = gates.check_alias(alias)
    except ValidationError as exc:
        tally.rejected(exc)
        assert not valid, f"{alias!r} is a valid alias but was refused: {exc}"
        return
    tally.ok()
    assert valid and checked == stripped


def _oracle_routes(served, routes) -> bool:
    names = [s.entity_name for s in served]
    if not served or len(set(names)) != len(names):
        return False
    seen = set()
    for route in routes:
        if route.entity_name not in names or route.entity_name in seen or not 0 <= route.percentage <= 100:
            return False
        seen.add(route.entity_name)
    return sum(r.percentage for r in routes) == 100


_ENTITIES = ["a_1", "a_2", "a_3", "b_1"]


@settings(max_examples=400)
@given(served=st.one_of(st.just(_ENTITIES), st.lists(st.sampled_from(_ENTITIES + ["", " a_1"]), max_size=4)),
       routes=mutated_splits(_ENTITIES, ["c_1", "", " a_1", "A_1"]))
def test_validate_routes_refuses_exactly_the_bad_splits(tallies, served, routes):
    """Negative, >100, not summing to 100, duplicate arms, unknown arms: refused; the rest accepted."""
    tally = tallies("serving.validate_routes")
    served_versions = tuple(serving.ServedVersion(n, "m", n[-1:] or "1") for n in served)
    traffic_routes = tuple(serving.TrafficRoute(n, p) for n, p in routes)
    valid = _oracle_routes(served_versions, traffic_routes)
    try:
        serving.validate_routes(served_versions, traffic_routes)
    except ValidationError as exc:
        tally.rejected(exc)
        assert not valid, f"a valid split was refused: {exc}"
        return
    tally.ok()
    assert valid, f"an invalid split was accepted: {served} {routes}"


# --- releases -----------------------------------------------------------------------------------


_PROMOTION = one_bad_field(
    {"agent": st.sampled_from([AGENT, f" {AGENT} "]), "alias": st.sampled_from(["champion", "challenger", "canary-1"]),
     "version": st.sampled_from([1, 2, "2", "v1", " 1 "]), "override": st.booleans(),
     "reason": st.sampled_from(["hotfix", "<img src=x onerror=alert(1)>", "回滚"])},
    {"agent": NAMES, "alias": ALIASES, "version": VERSIONS, "override": st.just(True),
     "reason": st.sampled_from(["", "  ", "\n"])},
)


@settings(max_examples=60)
@given(case=_PROMOTION)
@example(case={"agent": AGENT, "alias": "latest", "version": 1, "override": False, "reason": ""})
@example(case={"agent": AGENT, "alias": "champion", "version": 99, "override": False, "reason": ""})
@example(case={"agent": AGENT, "alias": "champion", "version": 2, "override": True, "reason": " "})
@example(case={"agent": "main.default.hard-agent", "alias": "champion", "version": 1, "override": False, "reason": ""})
def test_promote_refuses_bad_input_and_leaves_the_registry_alone(hard_store, tallies, case):
    tally = tallies("releases.promote")
    request = PromotionRequest(case["agent"], case["alias"], case["version"], reason=case["reason"],
                               override=case["override"])
    result, exc = attempt(tally, hard_store, lambda: releases.promote(request, hard_store.identity, hard_store.settings),
                          what=f"promote({case})")
    if exc is None:
        # Accepted: the registry holds what the trail recorded, and the trail names the user.
        state = releases.alias_state(result.plan.agent, result.plan.alias, hard_store.settings)
        assert state.version == result.change.to_version == result.plan.target_version
        assert state.drift is Drift.RECORDED
        assert result.change.user == hard_store.identity.user


_LOOKUP = one_bad_field({"agent": st.just(AGENT), "alias": st.sampled_from(["champion", "challenger"]),
                         "version": st.sampled_from([1, 2])},
                        {"agent": NAMES, "alias": ALIASES, "version": VERSIONS})


@settings(max_examples=40)
@given(case=_LOOKUP, stale=st.booleans())
def test_plan_promotion_and_history_read_without_writing(hard_store, tallies, case, stale):
    s = hard_store.settings
    agent, alias, version = case["agent"], case["alias"], case["version"]
    attempt(tallies("releases.plan_promotion"), hard_store, lambda: releases.plan_promotion(agent, alias, version, s),
            what="plan_promotion", changes_when_accepted=False)
    attempt(tallies("releases.alias_history"), hard_store, lambda: releases.alias_history(agent, alias, s),
            what="alias_history", changes_when_accepted=False)
    seen = Seen("no-such-version") if stale else None
    result, exc = attempt(tallies("releases.rollback"), hard_store,
                          lambda: releases.rollback(RollbackRequest(agent, alias, seen=seen), hard_store.identity, s),
                          what="rollback")
    if stale:
        assert exc is not None, "a rollback against a stale view went through"
    if exc is None:
        assert releases.alias_state(agent, alias, s).drift is Drift.RECORDED


_RULES = st.lists(st.builds(
    GateRule, kind=st.sampled_from(list(RuleKind)),
    threshold=FLOATS.filter(lambda x: not (isinstance(x, float) and math.isnan(x))),
    metric=st.one_of(st.none(), st.sampled_from(["", "expected_facts/mean", "x" * 300]), st.text(max_size=20)),
), max_size=4)


@settings(max_examples=50)
@given(agent=st.one_of(NAMES, st.just(AGENT)), rules=_RULES)
def test_gate_rules_are_checked_before_they_are_stored(hard_store, tallies, agent, rules):
    tally = tallies("releases.set_gate_rules")
    stored, exc = attempt(tally, hard_store, lambda: gates.set_gate_rules(agent, rules, hard_store.identity,
                                                                            hard_store.settings), what="set_gate_rules")
    if exc is None:
        assert gates.gate_rules(agent, hard_store.settings) == stored
        assert all(r.threshold >= 0 for r in stored)
        # Leave no rule behind that blocks the other tests' promotions.
        gates.set_gate_rules(agent, [], hard_store.identity, hard_store.settings)


def test_gate_rule_with_a_nan_threshold_is_refused(hard_store):
    before = hard_store.snapshot()
    with pytest.raises(ValidationError):
        gates.set_gate_rules(AGENT, [GateRule(RuleKind.MIN_VALUE, float("nan"), "expected_facts/mean")],
                                hard_store.identity, hard_store.settings)
    hard_store.assert_unchanged(before, "a NaN gate rule")


# --- versions -----------------------------------------------------------------------------------


@settings(max_examples=40)
@given(case=one_bad_field({"agent": st.just(AGENT), "left": st.sampled_from([1, "2", "v1"]),
                           "right": st.sampled_from([2, "1"])},
                          {"agent": NAMES, "left": VERSIONS, "right": VERSIONS}),
       search=st.text(max_size=20), page=st.integers(-3, 10), size=st.integers(-3, 60))
def test_version_views_read_without_writing(hard_store, tallies, case, search, page, size):
    s = hard_store.settings
    agent, left, right = case["agent"], case["left"], case["right"]
    frame, exc = attempt(tallies("versions.list_versions"), hard_store,
                         lambda: versions.list_versions(agent, s, search=search), what="list_versions",
                         changes_when_accepted=False)
    if exc is None:
        assert list(frame.columns) == list(versions.VERSION_COLUMNS)
        shown, pages = attempt(tallies("versions.paginate"), hard_store, lambda: versions.paginate(frame, page, size),
                               what="paginate", changes_when_accepted=False)[0] or (None, None)
        if shown is not None:
            assert 1 <= pages and len(shown) <= size
    attempt(tallies("versions.diff_versions"), hard_store, lambda: versions.diff_versions(agent, left, right, s),
            what="diff_versions", changes_when_accepted=False)


# --- serving splits -----------------------------------------------------------------------------

# Arms a user can pick or type: existing, missing, malformed, other agents.
_ARMS = st.sampled_from([(AGENT, "1"), (AGENT, "2"), (AGENT, "3"), (AGENT, "0"), (AGENT, "abc"), (AGENT, "v1"),
                         (AGENT, "²"), (AGENT, ""), ("no-such-agent", "1"), ("main.default.hard-agent", "1"),
                         ("", "1"), ("hard'agent", "1")])


_SPLIT_ARMS = [(AGENT, "1"), (AGENT, "2")]


@st.composite
def _weights(draw):
    """A valid split of the two versions, a broken one, or a share of the wrong type / an arm that is not there."""
    arms = [(a, v) for a, v in draw(mutated_splits([f"{a}|{v}" for a, v in _SPLIT_ARMS], ["x"]))]
    weights = {tuple(name.split("|")) if "|" in name else None: share for name, share in arms}
    weights.pop(None, None)
    how = draw(st.sampled_from(["none", "none", "type", "arm"]))
    if how == "type" and weights:
        key = draw(st.sampled_from(sorted(weights)))
        weights[key] = draw(PERCENTS.filter(lambda p: not isinstance(p, int) or isinstance(p, bool)))
    elif how == "arm":
        weights[draw(_ARMS)] = 0
    return weights


@settings(max_examples=80)
@given(endpoint=st.one_of(st.just(ENDPOINT), st.just(ENDPOINT), NAMES), weights=_weights(),
       sticky=st.one_of(st.none(), st.booleans()), reason=st.sampled_from(["", "   ", "shift", "<b>x</b>"]),
       apply=st.booleans())
@example(endpoint=ENDPOINT, weights={(AGENT, "1"): 60, (AGENT, "2"): 40}, sticky=None, reason="shift", apply=True)
@example(endpoint=ENDPOINT, weights={(AGENT, "1"): 120, (AGENT, "2"): -20}, sticky=None, reason="shift", apply=True)
@example(endpoint=ENDPOINT, weights={(AGENT, "1"): 50, (AGENT, "2"): 49}, sticky=None, reason="shift", apply=True)
@example(endpoint=ENDPOINT, weights={(AGENT, "1"): 50.0, (AGENT, "2"): 50}, sticky=None, reason="shift", apply=True)
@example(endpoint=ENDPOINT, weights={}, sticky=None, reason="shift", apply=True)
def test_split_changes_refuse_bad_shares_and_keep_config_and_trail_in_step(hard_store, tallies, endpoint, weights,
                                                                          sticky, reason, apply):
    s = hard_store.settings
    plan, exc = attempt(tallies("serving.plan_split"), hard_store,
                        lambda: serving.plan_split(endpoint, weights, sticky=sticky, settings=s),
                        what=f"plan_split({weights})", changes_when_accepted=False)
    if exc is not None:
        return
    shares = [r.percentage for r in plan.after.routes]
    assert sum(shares) == 100 and all(0 <= p <= 100 for p in shares)
    if not apply:
        return
    stored, exc = attempt(tallies("serving.apply_split"), hard_store,
                          lambda: serving.apply_split(plan, user=hard_store.identity.user, reason=reason, settings=s,
                                                      identity=hard_store.identity), what="apply_split")
    if exc is not None:
        assert reason.strip() == "" or isinstance(exc, ConflictError), exc
        return
    # The config the gateway reads and the audit trail agree on what was done, and by whom.
    assert serving.get_endpoint(ENDPOINT, s).routes == plan.after.routes == stored.routes
    last = audit.traffic_changes(ENDPOINT, settings=s)[0]
    assert last.after == plan.percentages()[1] and last.user == hard_store.identity.user
    if (plan.before.served, plan.before.routes, plan.before.sticky) != (plan.after.served, plan.after.routes,
                                                                      plan.after.sticky):
        # The same plan again was made against a split that no longer holds: refused, nothing changes.
        _, again = attempt(tallies("serving.apply_split"), hard_store,
                           lambda: serving.apply_split(plan, user=hard_store.identity.user, reason=reason, settings=s,
                                                       identity=hard_store.identity), what="stale apply_split")
        assert isinstance(again, ConflictError)


def test_a_version_typed_two_ways_is_one_arm(hard_store):
    before = hard_store.snapshot()
    with pytest.raises(ValidationError):
        serving.plan_split(ENDPOINT, {(AGENT, "1"): 50, (AGENT, "01"): 50}, settings=hard_store.settings)
    hard_store.assert_unchanged(before, "a duplicate arm")


# --- AI Gateway weights (pure parts; the REST path needs an mlflow server) ------------------------


@settings(max_examples=150)
@given(weights=st.dictionaries(st.text(max_size=8), PERCENTS, max_size=4))
def test_gateway_weights_are_type_checked_before_any_request(tmp_path_factory, tallies, weights):
    """Non-integer shares are refused before the gateway is called (port 9 answers nothing)."""
    tally = tallies("ai_gateway.plan_weights")
    tally.notes = "BackendUnavailableError here means the shares passed validation and only then met the closed port."
    closed = load_settings({"AGENTOPS_BACKEND": "mlflow", "AGENTOPS_MLFLOW_URI": "http://127.0.0.1:9",
                            "AGENTOPS_DATA_DIR": str(tmp_path_factory.getbasetemp() / "gw-closed")})
    whole = all(isinstance(p, int) and not isinstance(p, bool) for p in weights.values())
    try:
        serving.plan_weights("ep", weights, settings=closed)
    except ValidationError as exc:
        tally.rejected(exc)
        assert not weights or not whole, f"whole shares refused before the request: {exc}"
    except BackendUnavailableError as exc:
        tally.rejected(exc)
        assert weights and whole, "a bad share reached the gateway"
    else:  # pragma: no cover - nothing answers on port 9
        pytest.fail("plan_weights returned without a gateway")


@settings(max_examples=200)
@given(weights=st.lists(st.floats(min_value=0, max_value=1), min_size=1, max_size=5))
def test_gateway_shares_always_add_up(tallies, weights):
    tally = tallies("ai_gateway shares from stored weights")
    models = [ai_gateway.GatewayModel(str(i), f"m{i}", "openai", f"gpt-{i}", ai_gateway.PRIMARY, w, None)
              for i, w in enumerate(weights)]
    shares = ai_gateway._shares(models, routed=True)
    tally.ok()
    assert all(s >= 0 for s in shares)
    assert sum(shares) in (0, 100)


@settings(max_examples=101)
@given(pct=st.integers(0, 100))
def test_gateway_weight_survives_float32_storage(tallies, pct):
    tally = tallies("ai_gateway weight round trip")
    tally.ok()
    assert ai_gateway._percent(float(np.float32(ai_gateway._weight(pct)))) == pct


# --- readiness and test traffic -------------------------------------------------------------------


_ITEMS = st.one_of(
    st.lists(st.sampled_from([i.value for i in readiness.Item] + [" gate "]), max_size=4),
    st.lists(st.one_of(st.sampled_from([i.value for i in readiness.Item] + ["GATE", "", "loads"]),
                       st.text(max_size=12)), min_size=1, max_size=5),
)


@settings(max_examples=50)
@given(agent=st.one_of(NAMES, st.just(AGENT), st.just(AGENT)), items=_ITEMS)
def test_required_readiness_items_are_checked_before_they_are_stored(hard_store, tallies, agent, items):
    tally = tallies("readiness.set_required_items")
    stored, exc = attempt(tally, hard_store, lambda: readiness.set_required_items(
        agent, items, hard_store.identity, hard_store.settings), what="set_required_items")
    if exc is None:
        from mlflow import MlflowClient

        model = MlflowClient(hard_store.settings.tracking_uri, hard_store.settings.registry_uri).get_registered_model(
            versions.check_agent_name(agent))
        assert readiness.parse_required(model.tags.get(readiness.REQUIRED_TAG)) == stored or not stored
        assert model.tags.get(readiness.REQUIRED_TAG + ".updated_by") == hard_store.identity.user


@settings(max_examples=60)
@given(n=st.one_of(st.integers(-5, traffic.MAX_TEST_REQUESTS + 5), st.sampled_from([0, 1, traffic.MAX_TEST_REQUESTS,
                                                                                     traffic.MAX_TEST_REQUESTS + 1])),
       questions=st.lists(st.text(max_size=10), max_size=3))
def test_test_traffic_is_validated_before_the_gateway_is_called(tmp_path_factory, tallies, n, questions):
    tally = tallies("traffic.send_test_traffic")
    tally.notes = "BackendUnavailableError here means the request passed validation and only then met the closed port."
    closed = load_settings({"AGENTOPS_DATA_DIR": str(tmp_path_factory.getbasetemp() / "gw-closed"),
                            "AGENTOPS_GATEWAY_URL": "http://127.0.0.1:9"})
    valid = bool(questions) and 1 <= n <= traffic.MAX_TEST_REQUESTS
    with pytest.raises((ValidationError, BackendUnavailableError)) as caught:
        traffic.send_test_traffic(ENDPOINT, questions, n, settings=closed)
    tally.rejected(caught.value)
    assert isinstance(caught.value, BackendUnavailableError) == valid, caught.value


# --- the wrong person ---------------------------------------------------------------------------


def _mutations(store):
    from services import eval_jobs, evaluations, pricing
    from services import feedback as fb

    s = store.settings
    plan = serving.plan_split(ENDPOINT, {(AGENT, "1"): 10, (AGENT, "2"): 90}, settings=s)
    request = evaluations.EvaluationRequest(AGENT, "1", ("expected_facts",), dataset_name="hard-golden")
    return {
        "releases.promote": lambda who: releases.promote(PromotionRequest(AGENT, "champion", 2, reason="x",
                                                                          override=True), who, s),
        "releases.rollback": lambda who: releases.rollback(RollbackRequest(AGENT, "challenger"), who, settings=s),
        "releases.set_gate_rules": lambda who: gates.set_gate_rules(AGENT, [], who, s),
        "readiness.set_required_items": lambda who: readiness.set_required_items(AGENT, ["gate"], who, s),
        "serving.apply_split": lambda who: serving.apply_split(plan, user=who.user, reason="x", settings=s, identity=who),
        "feedback.submit_review": lambda who: fb.submit_review(store.trace_ids[1], fb.Review(thumbs_up=True), who.user,
                                                               settings=s, identity=who),
        "eval_jobs.start_job": lambda who: eval_jobs.start_job(request, s, who),
        "pricing.save_prices": lambda who: pricing.save_prices(s, {"m": {"input_per_mtok": 1, "output_per_mtok": 2}},
                                                               identity=who),
    }


@pytest.mark.parametrize("role", ["viewer", "reviewer"])
def test_mutations_by_a_role_that_may_not_make_them_change_nothing(hard_store, tallies, tmp_path, monkeypatch, role):
    import json

    from services.errors import PermissionDeniedError
    from services.identity import Identity, IdentitySource

    roles_file = tmp_path / "roles.json"
    roles_file.write_text(json.dumps({"users": {"low@example.com": role}, "default": "viewer"}))
    monkeypatch.setenv("AGENTOPS_ROLES_FILE", str(roles_file))
    low = Identity("low@example.com", "low", IdentitySource.DATABRICKS_APPS)
    refused = 0
    for name, mutate in _mutations(hard_store).items():
        if role == "reviewer" and name == "feedback.submit_review":
            continue  # reviewers may review
        _, exc = attempt(tallies("mutations by a viewer or reviewer (8 entry points)"), hard_store,
                         lambda: mutate(low), what=f"{name} as a {role}")
        assert isinstance(exc, PermissionDeniedError), f"{name} let a {role} through ({exc!r})"
        assert role in str(exc)
        refused += 1
    assert refused >= 7
