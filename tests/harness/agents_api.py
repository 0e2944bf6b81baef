"""The REST families ``databricks.agents.deploy`` and the Review App labeling calls use, as
extensions of :class:`tests.harness.databricks.DatabricksHarness`.

What each call answers was read from the installed packages (``databricks/agents/deployments.py``,
``databricks/rag_eval/clients/managedevals/managed_evals_client.py``, MLflow's Unity Catalog
artifact repository) and is built from their own types wherever they have one: databricks-sdk
dataclasses (``as_dict``), MLflow protos (``message_to_json``), databricks-agents' ``Deployment``
and the Review App's REST entities. A change in those types shows up as a failing test.

* :class:`AgentsApi` — deploy: the UC model version (SDK ``/api/2.1`` and MLflow's
  ``/api/2.0/mlflow/unity-catalog`` calls), the model's ``MLmodel`` through a presigned download
  from a separate "cloud storage" server, serving endpoint create / tag patch, UC table existence,
  and ``/api/2.0/agents/deployments``.
* :class:`ReviewAppApi` — labeling sessions: review apps, labeling sessions and their items,
  experiment permissions, ``experiments/get`` and linking traces to the session's run.
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from tests.harness.databricks import DatabricksHarness
from tests.harness.databricks_settings import databricks_settings


def _not_found(message: str, code: str = "RESOURCE_DOES_NOT_EXIST") -> tuple[int, dict]:
    return 404, {"error_code": code, "message": message}


def agent_mlmodel(*, signature: str = "responses") -> str:
    """The ``MLmodel`` file of a logged agent (MLflow's own ``Model``), with the agent signature
    ``databricks.agents.deploy`` checks, or a plain one it refuses."""
    from mlflow.models import Model, ModelSignature
    from mlflow.types import ColSpec, DataType, Schema
    from mlflow.types.responses import RESPONSES_AGENT_INPUT_SCHEMA, RESPONSES_AGENT_OUTPUT_SCHEMA

    if signature == "responses":
        sig = ModelSignature(RESPONSES_AGENT_INPUT_SCHEMA, RESPONSES_AGENT_OUTPUT_SCHEMA)
    else:
        sig = ModelSignature(Schema([ColSpec(DataType.double, "x")]), Schema([ColSpec(DataType.double)]))
    model = Model(artifact_path="agent", flavors={"python_function": {"loader_module": "mlflow.pyfunc.model",
                                                                      "python_version": "3.11"}},
                  signature=sig, metadata={"task": "agent/v1/responses"} if signature == "responses" else None)
    return model.to_yaml()


class _BlobStore:
    """A stand-in for cloud storage: serves bytes at the presigned URLs the harness hands out."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.downloads: list[str] = []
        store = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server naming
                path = self.path.split("?")[0]
                store.downloads.append(path)
                data = store.blobs.get(path)
                self.send_response(200 if data is not None else 404)
                body = data if data is not None else b"NoSuchKey"
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@dataclass
class AgentsApi:
    """Unity Catalog model versions and the agents deployment service, plugged into a harness."""

    harness: DatabricksHarness
    # (full UC name, version) -> the version's MLmodel text.
    models: dict[tuple[str, str], str] = field(default_factory=dict)
    # Deployments recorded by POST /api/2.0/agents/deployments (databricks-agents' own type).
    deployments: list[Any] = field(default_factory=list)
    # UC tables that already exist (the inference-table name probe asks).
    tables: set[str] = field(default_factory=set)
    # Answer POST /api/2.0/agents/deployments with this (status, payload) instead, to test failures.
    deploy_error: tuple[int, dict] | None = None
    # Endpoints whose next rollout fails (the GET after an update reports UPDATE_FAILED).
    fail_rollout: set[str] = field(default_factory=set)
    # (method, path, Authorization header) of every request the harness received, to check who called.
    callers: list[tuple[str, str, str]] = field(default_factory=list)
    _blobs: _BlobStore | None = None

    def install(self) -> "AgentsApi":
        self._blobs = _BlobStore()
        self.harness.handlers.append(self.handle)
        return self

    def stop(self) -> None:
        if self._blobs:
            self._blobs.stop()

    def add_model_version(self, name: str, version: str | int, mlmodel: str | None = None) -> None:
        self.models[(name, str(version))] = mlmodel if mlmodel is not None else agent_mlmodel()

    # --- dispatch --------------------------------------------------------------------------------

    def handle(self, method: str, path: str, body: Any, headers: Any) -> tuple[int, Any] | None:
        self.callers.append((method, path, headers.get("Authorization") or ""))
        if method == "GET" and path.startswith("/api/2.0/serving-endpoints/") and path.count("/") == 4:
            return self._maybe_fail_rollout(path.rsplit("/", 1)[-1])
        if path.startswith("/api/2.1/unity-catalog/models/") and method == "GET":
            return self._uc_model_version(path)
        if path.startswith("/api/2.0/mlflow/unity-catalog/"):
            return self._mlflow_uc(method, path, body or {})
        if path.startswith("/api/2.0/fs/"):
            return self._files(method, path, body or {})
        if path.startswith("/api/2.1/unity-catalog/tables/") and path.endswith("/exists"):
            from databricks.sdk.service import catalog

            full_name = unquote(path.removeprefix("/api/2.1/unity-catalog/tables/").removesuffix("/exists"))
            return 200, catalog.TableExistsResponse(table_exists=full_name in self.tables).as_dict()
        if path == "/api/2.0/serving-endpoints" and method == "POST":
            return self._create_endpoint(body or {})
        if path.startswith("/api/2.0/serving-endpoints/") and path.endswith("/tags") and method == "PATCH":
            return self._patch_tags(path.split("/")[4], body or {})
        if path.startswith("/api/2.0/agents/"):
            return self._agents(method, path, body or {})
        return None

    # --- Unity Catalog model versions --------------------------------------------------------------

    def _uc_model_version(self, path: str) -> tuple[int, Any]:
        from databricks.sdk.service import catalog

        parts = path.removeprefix("/api/2.1/unity-catalog/models/").split("/")
        if len(parts) != 3 or parts[1] != "versions":
            return _not_found(f"No API at {path}", "ENDPOINT_NOT_FOUND")
        full_name, version = unquote(parts[0]), parts[2]
        if (full_name, version) not in self.models:
            return _not_found(f"Model version {full_name}/{version} does not exist.")
        catalog_name, schema_name, model_name = full_name.split(".")
        return 200, catalog.ModelVersionInfo(
            catalog_name=catalog_name, schema_name=schema_name, model_name=model_name, version=int(version),
            status=catalog.ModelVersionInfoStatus.READY, source=f"models:/m-{version}",
            storage_location=f"s3://uc/models/{full_name}/{version}",
        ).as_dict()

    def _mlflow_uc(self, method: str, path: str, body: dict) -> tuple[int, Any]:
        from mlflow.protos import databricks_uc_registry_messages_pb2 as uc
        from mlflow.utils.proto_json_utils import message_to_json

        route = path.removeprefix("/api/2.0/mlflow/unity-catalog/")
        if route == "registered-models:is-databricks-sdk-models-artifact-repository-enabled":
            # "No": MLflow then downloads through a presigned URL (the Files API path needs HEAD).
            answer = uc.IsDatabricksSdkModelsArtifactRepositoryEnabledResponse(
                is_databricks_sdk_models_artifact_repository_enabled=False)
            return 200, json.loads(message_to_json(answer))
        if route == "model-versions/generate-temporary-credentials":
            if (body.get("name"), str(body.get("version"))) not in self.models:
                return _not_found(f"Model version {body.get('name')}/{body.get('version')} does not exist.")
            answer = uc.GenerateTemporaryModelVersionCredentialsResponse(
                credentials=uc.TemporaryCredentials(storage_mode=uc.StorageMode.DEFAULT_STORAGE))
            return 200, json.loads(message_to_json(answer))
        return _not_found(f"No API at {path}", "ENDPOINT_NOT_FOUND")

    def _files(self, method: str, path: str, body: dict) -> tuple[int, Any]:
        from mlflow.protos import databricks_filesystem_service_pb2 as fs
        from mlflow.utils.proto_json_utils import message_to_json

        if path.startswith("/api/2.0/fs/directories/") and method == "GET":
            # Listing a file path: not a directory (MLflow then downloads it as a file).
            return _not_found(f"{path.removeprefix('/api/2.0/fs/directories')} is not a directory", "NOT_FOUND")
        if path == "/api/2.0/fs/create-download-url" and method == "POST":
            remote = body.get("path", "")
            found = self._blob_for(remote)
            if found is None:
                return _not_found(f"{remote} does not exist", "NOT_FOUND")
            assert self._blobs is not None
            key = f"/blob/{uuid.uuid4().hex}"
            self._blobs.blobs[key] = found
            answer = fs.CreateDownloadUrlResponse(url=self._blobs.url + key)
            return 200, json.loads(message_to_json(answer))
        return _not_found(f"No API at {path}", "ENDPOINT_NOT_FOUND")

    def _blob_for(self, remote: str) -> bytes | None:
        # /Models/<catalog>/<schema>/<model>/<version>/MLmodel
        parts = remote.strip("/").split("/")
        if len(parts) == 6 and parts[0] == "Models" and parts[5] == "MLmodel":
            mlmodel = self.models.get((".".join(parts[1:4]), parts[4]))
            return mlmodel.encode() if mlmodel is not None else None
        return None

    # --- serving endpoints (the parts the core harness leaves to extensions) ---------------------

    def _create_endpoint(self, body: dict) -> tuple[int, Any]:
        from databricks.sdk.service import serving as sdk

        name = body.get("name", "")
        if name in self.harness.endpoints:
            return 400, {"error_code": "RESOURCE_ALREADY_EXISTS", "message": f"Endpoint {name} already exists"}
        config = sdk.EndpointCoreConfigInput.from_dict({**(body.get("config") or {}), "name": name})
        endpoint = sdk.ServingEndpointDetailed(
            name=name, id=uuid.uuid4().hex, creator="deployer",
            state=sdk.EndpointState(config_update=sdk.EndpointStateConfigUpdate.IN_PROGRESS,
                                    ready=sdk.EndpointStateReady.NOT_READY),
            pending_config=sdk.EndpointPendingConfig(
                # Every field the request gave is kept, as Model Serving does.
                served_entities=[sdk.ServedEntityOutput.from_dict(e.as_dict()) for e in config.served_entities or []],
                traffic_config=config.traffic_config, config_version=1,
            ),
            tags=[sdk.EndpointTag.from_dict(t) for t in body.get("tags") or []],
            ai_gateway=sdk.AiGatewayConfig.from_dict(body["ai_gateway"]) if body.get("ai_gateway") else None,
            description=body.get("description"),
        )
        self.harness.endpoints[name] = endpoint
        self.harness._polls_left[name] = self.harness.rollout_polls  # rolled out by later GETs
        return 200, endpoint.as_dict()

    def _maybe_fail_rollout(self, name: str) -> tuple[int, Any] | None:
        from databricks.sdk.service import serving as sdk

        endpoint = self.harness.endpoints.get(name)
        if name not in self.fail_rollout or endpoint is None or endpoint.pending_config is None:
            return None  # the core harness answers (and rolls out)
        self.fail_rollout.discard(name)
        self.harness._polls_left.pop(name, None)
        endpoint.pending_config = None
        endpoint.state = sdk.EndpointState(config_update=sdk.EndpointStateConfigUpdate.UPDATE_FAILED,
                                           ready=endpoint.state.ready if endpoint.state else None)
        return 200, endpoint.as_dict()

    def _patch_tags(self, name: str, body: dict) -> tuple[int, Any]:
        from databricks.sdk.service import serving as sdk

        endpoint = self.harness.endpoints.get(name)
        if endpoint is None:
            return _not_found(f"Endpoint {name} not found")
        tags = {t.key: t for t in endpoint.tags or []}
        for key in body.get("delete_tags") or []:
            tags.pop(key, None)
        for tag in body.get("add_tags") or []:
            tags[tag["key"]] = sdk.EndpointTag.from_dict(tag)
        endpoint.tags = list(tags.values())
        return 200, sdk.EndpointTags(tags=endpoint.tags).as_dict()

    # --- agents deployments -------------------------------------------------------------------------

    def _agents(self, method: str, path: str, body: dict) -> tuple[int, Any]:
        from databricks.agents.sdk_utils.entities import Deployment

        if path == "/api/2.0/agents/deployments" and method == "POST":
            if self.deploy_error is not None:
                return self.deploy_error
            deployment = Deployment(
                model_name=body["model_name"], model_version=str(body["model_version"]),
                endpoint_name=body["endpoint_name"], served_entity_name=body["served_entity_name"],
                query_endpoint=body["query_endpoint"], endpoint_url=None,
                review_app_url=f"{body['workspace_url']}/ml/review-v2/{uuid.uuid4().hex[:12]}/chat",
            )
            self.deployments.append(deployment)
            return 200, {"deployed_chain": _deployment_json(deployment)}
        if path == "/api/2.0/agents/deployments" and method == "GET":
            return 200, {"chain_deployments": [_deployment_json(d) for d in self.deployments]}
        if path.startswith("/api/2.0/agents/deployments/") and method == "GET":
            parts = path.removeprefix("/api/2.0/agents/deployments/").split("/")
            found = [d for d in self.deployments if d.model_name == parts[0]
                     and (len(parts) < 3 or d.model_version == parts[2])]
            return 200, {"chain_deployments": [_deployment_json(d) for d in found]}
        return _not_found(f"No API at {path}", "ENDPOINT_NOT_FOUND")


def _deployment_json(deployment: Any) -> dict:
    # The service does not send endpoint_url: the client builds it from the workspace URL.
    return {k: v for k, v in asdict(deployment).items() if k != "endpoint_url" and v is not None}


# --- Review App labeling sessions ------------------------------------------------------------------


@dataclass
class ReviewAppApi:
    """Review apps per experiment, their labeling sessions and items, plugged into a harness."""

    harness: DatabricksHarness
    # experiment id -> name, answered at /api/2.0/mlflow/experiments/get.
    experiments: dict[str, str] = field(default_factory=dict)
    review_apps: dict[str, dict] = field(default_factory=dict)  # review_app_id -> REST ReviewApp JSON
    sessions: dict[str, dict] = field(default_factory=dict)  # labeling_session_id -> REST LabelingSession JSON
    items: dict[str, list[dict]] = field(default_factory=dict)  # labeling_session_id -> items
    linked: dict[str, list[str]] = field(default_factory=dict)  # run id -> trace ids linked to it
    permissions: dict[str, list[dict]] = field(default_factory=dict)  # experiment id -> ACL entries granted
    # Refuse creating labeling sessions with 403 (the caller lacks rights on the review app).
    forbid_sessions: bool = False
    # (method, path, Authorization header) of every request the harness received, to check who called.
    callers: list[tuple[str, str, str]] = field(default_factory=list)

    def install(self) -> "ReviewAppApi":
        self.harness.handlers.append(self.handle)
        return self

    def handle(self, method: str, path: str, body: Any, headers: Any) -> tuple[int, Any] | None:
        self.callers.append((method, path, headers.get("Authorization") or ""))
        body = body or {}
        if path.startswith("/api/2.0/managed-evals/review-apps"):
            return self._review_apps(method, path, body)
        if path == "/api/2.0/mlflow/experiments/get" and method == "GET":
            return self._experiment(path)
        if path.startswith("/api/2.0/permissions/experiments/"):
            return self._experiment_permissions(method, path, body)
        if path in ("/api/2.0/mlflow/traces/link-to-run", "/api/4.0/mlflow/traces/link-to-run") and method == "POST":
            self.linked.setdefault(body["run_id"], []).extend(body.get("trace_ids") or [])
            return 200, {}
        return None

    def _experiment(self, path: str) -> tuple[int, Any]:
        from mlflow.entities import Experiment
        from mlflow.protos.service_pb2 import GetExperiment
        from mlflow.utils.proto_json_utils import message_to_json

        experiment_id = (self._query("GET", path).get("experiment_id") or [""])[0]
        if experiment_id not in self.experiments:
            return _not_found(f"Could not find experiment with ID {experiment_id}")
        experiment = Experiment(experiment_id, self.experiments[experiment_id], "dbfs:/artifacts", "active")
        answer = GetExperiment.Response(experiment=experiment.to_proto())
        return 200, json.loads(message_to_json(answer))

    def _query(self, method: str, path: str) -> dict[str, list[str]]:
        """The query of the request being answered: the harness hands extensions the bare path, and
        records each request (with its query) before asking them, so it is the latest such entry."""
        for request in reversed(self.harness.requests):
            if request.method == method and request.path.split("?")[0] == path:
                return parse_qs(urlparse(request.path).query)
        return {}

    def _review_apps(self, method: str, path: str, body: dict) -> tuple[int, Any]:
        from databricks.rag_eval.review_app import rest_entities

        rest = path.removeprefix("/api/2.0/managed-evals/review-apps").strip("/")
        parts = rest.split("/") if rest else []
        if not parts and method == "GET":
            wanted = unquote((self._query(method, path).get("filter") or [""])[0]).removeprefix("experiment_id=")
            apps = [a for a in self.review_apps.values() if a.get("experiment_id") == wanted]
            return 200, {"review_apps": apps}
        if not parts and method == "POST":
            app = rest_entities.ReviewApp.from_dict(body)
            app.review_app_id = uuid.uuid4().hex[:16]  # the client builds the app's URL from the workspace URL
            self.review_apps[app.review_app_id] = app.to_dict()
            return 200, self.review_apps[app.review_app_id]
        app_id = parts[0]
        if app_id not in self.review_apps:
            return _not_found(f"Review app {app_id} does not exist")
        if len(parts) == 1 and method == "PATCH":
            merged = {**self.review_apps[app_id], **body, "review_app_id": app_id}
            self.review_apps[app_id] = rest_entities.ReviewApp.from_dict(merged).to_dict()
            return 200, self.review_apps[app_id]
        if len(parts) >= 2 and parts[1] == "labeling-sessions":
            return self._sessions(method, app_id, parts[2:], body)
        return _not_found(f"No API at {path}", "ENDPOINT_NOT_FOUND")

    def _sessions(self, method: str, app_id: str, parts: list[str], body: dict) -> tuple[int, Any]:
        from databricks.rag_eval.review_app import rest_entities

        if not parts and method == "POST":
            if self.forbid_sessions:
                return 403, {"error_code": "PERMISSION_DENIED", "message": "User cannot create labeling sessions"}
            session = rest_entities.LabelingSession.from_dict(body)
            session.labeling_session_id = uuid.uuid4().hex[:16]
            session.mlflow_run_id = uuid.uuid4().hex
            self.sessions[session.labeling_session_id] = {**session.to_dict(), "review_app_id": app_id}
            self.items[session.labeling_session_id] = []
            return 200, session.to_dict()
        if not parts and method == "GET":
            found = [{k: v for k, v in s.items() if k != "review_app_id"}
                     for s in self.sessions.values() if s["review_app_id"] == app_id]
            return 200, {"labeling_sessions": found}
        session_id = parts[0].split(":")[0]
        if session_id not in self.sessions:
            return _not_found(f"Labeling session {session_id} does not exist")
        if len(parts) == 2 and parts[1] == "items:batchCreate" and method == "POST":
            self.items[session_id].extend(
                {"item_id": uuid.uuid4().hex[:12], "state": "PENDING", **item} for item in body.get("items") or [])
            return 200, {}
        if len(parts) == 2 and parts[1] == "items" and method == "GET":
            return 200, {"items": self.items[session_id]}
        return _not_found("No such labeling session API", "ENDPOINT_NOT_FOUND")

    def _experiment_permissions(self, method: str, path: str, body: dict) -> tuple[int, Any]:
        from databricks.sdk.service import ml

        experiment_id = path.rstrip("/").rsplit("/", 1)[-1]
        if method == "GET":
            acl = [ml.ExperimentAccessControlResponse.from_dict(
                {"user_name": e.get("user_name"),
                 "all_permissions": [{"permission_level": e.get("permission_level"), "inherited": False}]})
                for e in self.permissions.get(experiment_id, [])]
            return 200, ml.ExperimentPermissions(object_id=f"/experiments/{experiment_id}", object_type="mlflowExperiment",
                                                 access_control_list=acl).as_dict()
        self.permissions.setdefault(experiment_id, []).extend(body.get("access_control_list") or [])
        return self._experiment_permissions("GET", path, {})


# --- what the tests of these APIs read back ------------------------------------------------------


def app_settings(harness: DatabricksHarness, data_dir: Any) -> Any:
    """The app's settings on the Databricks backend against ``harness`` (data folder for the local parts)."""
    return databricks_settings(harness, data_dir)


def api_calls(harness: DatabricksHarness, *, with_query: bool = False) -> list[tuple[str, str]]:
    """``(method, path)`` of every request the harness got (host-metadata probes aside)."""
    return [(r.method, r.path if with_query else r.path.split("?")[0]) for r in harness.requests
            if "/.well-known/" not in r.path]


def api_tokens(harness: DatabricksHarness) -> set[str]:
    """Authorization headers of all API calls (the unauthenticated host-metadata probe aside)."""
    return {auth for _, path, auth in harness.api.callers if not path.startswith("/.well-known/")}
