"""Serving endpoints and their traffic splits, on three backends behind one interface.

- ``entities``: endpoints, served versions, routes, ``EndpointBackend``.
- ``base``: the ``SplitBackend`` interface; ``local``, ``model_serving`` (Databricks) and
  ``ai_gateway`` (MLflow AI Gateway) implement it; ``backends`` chooses one.
- ``splits``: read endpoints, plan and apply a split (audited), settle an interrupted change.
- ``deploy``: ``databricks.agents.deploy``, run by ``agents_child`` in a child process.
"""

from services.serving.agents_child import run_agents_call
from services.serving.backends import agent_endpoints_backend, arm_labels, percentages, split_backend
from services.serving.base import MAX_TRACES_PER_ARM, ArmTraffic, SplitBackend
from services.serving.deploy import (
    MONITOR_EXPERIMENT_TAG,
    Deployment,
    DeployPlan,
    deploy_version,
    plan_deploy,
    validate_uc_model_name,
)
from services.serving.entities import (
    Endpoint,
    EndpointBackend,
    EndpointState,
    ServedVersion,
    TrafficRoute,
    describe_split,
    endpoint_from_json,
    endpoint_to_json,
    validate_routes,
    version_label,
)
from services.serving.local import ENDPOINT_KEY, delete_local_endpoint, local_config_path, save_local_endpoint
from services.serving.model_serving import agents_endpoint_name, entity_name_for
from services.serving.splits import (
    SplitPlan,
    apply_split,
    arm_traffic,
    endpoint_lock,
    get_endpoint,
    list_endpoints,
    normalise_version,
    plan_shares,
    plan_split,
    plan_weights,
    settle_interrupted,
)

__all__ = [
    "ENDPOINT_KEY", "MAX_TRACES_PER_ARM", "MONITOR_EXPERIMENT_TAG", "ArmTraffic", "DeployPlan", "Deployment", "Endpoint", "EndpointBackend",
    "EndpointState", "ServedVersion", "SplitBackend", "SplitPlan", "TrafficRoute", "agent_endpoints_backend", "arm_labels",
    "agents_endpoint_name", "apply_split", "arm_traffic", "deploy_version", "describe_split", "endpoint_from_json",
    "endpoint_to_json", "entity_name_for", "get_endpoint", "list_endpoints", "local_config_path", "normalise_version",
    "percentages", "plan_deploy", "plan_shares", "plan_split", "plan_weights", "run_agents_call",
    "delete_local_endpoint", "save_local_endpoint", "endpoint_lock", "settle_interrupted", "split_backend", "validate_routes", "validate_uc_model_name",
    "version_label",
]
