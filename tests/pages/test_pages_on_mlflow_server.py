"""Every page (AppTest) against a real ``mlflow server`` whose store another team wrote.

The store is written over HTTP with MLflow's public APIs only (a registered model with two
versions, traces linked to them, an evaluation-style run), and the app runs on the ``mlflow``
backend with a teammate's own empty data folder. The server's real limits (``search_traces``
refuses pages over 500) apply: no local client is swapped in.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from streamlit.testing.v1 import AppTest

from services import _clients
from tests.harness.mlflow_server import running_mlflow_server

APP = str(Path(__file__).resolve().parents[2] / "app.py")
PAGES = ("pages/overview.py", "pages/versions.py", "pages/evaluations.py", "pages/review.py",
         "pages/serving.py", "pages/monitoring.py")
MODEL = "support-bot"
pytestmark = pytest.mark.slow


class _Echo(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


def _write_store(uri: str, artifacts: Path) -> str:
    """What another team's code writes: models, versions, linked traces, a run. No agentops tags."""
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(uri, uri)
    experiment_id = client.create_experiment("support-bot-dev")
    mlflow.set_experiment(experiment_id=experiment_id)
    for number in (1, 2):
        with mlflow.start_run(run_name=f"train-{number}"):
            info = mlflow.pyfunc.log_model(name="agent", python_model=_Echo(), registered_model_name=MODEL,
                                           pip_requirements=["mlflow"])
            mlflow.log_metric("accuracy", 0.7 + number / 10)
        mlflow.set_active_model(model_id=info.model_id)
        for index in range(3):
            with mlflow.start_span(name="predict", span_type="AGENT") as span:
                span.set_inputs({"question": f"order {index}?"})
                span.set_outputs({"answer": "shipped"})
                mlflow.update_current_trace(tags={"team.version": str(number)})
    mlflow.flush_trace_async_logging()
    # The active model is process-wide: left set, later tests' runs would log metrics against a LoggedModel
    # of this server in their own stores.
    mlflow.clear_active_model()
    client.set_registered_model_alias(MODEL, "champion", "1")
    return experiment_id


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("team-server")
    with running_mlflow_server(root, open_roles=False) as settings:
        experiment_id = _write_store(settings.mlflow_uri, root / "artifacts")
        yield settings, experiment_id
    _clients.configure_mlflow()


@pytest.fixture
def teammate_app(shared_server, tmp_path, monkeypatch):
    settings, experiment_id = shared_server
    monkeypatch.setenv("AGENTOPS_BACKEND", "mlflow")
    monkeypatch.setenv("AGENTOPS_MLFLOW_URI", settings.mlflow_uri)
    monkeypatch.setenv("AGENTOPS_EXPERIMENT_IDS", experiment_id)  # where the team's traces are
    monkeypatch.setenv("AGENTOPS_DATA_DIR", str(tmp_path / "teammate"))  # a teammate's own, empty folder
    _clients._cached_settings.cache_clear()
    yield
    monkeypatch.undo()
    _clients._cached_settings.cache_clear()
    _clients.configure_mlflow()


def _problems(app: AppTest) -> list[str]:
    """Error blocks other than threshold alerts (which are the page working), and refusals shown as warnings."""
    return ([e.value for e in app.error if e.icon != ":material/notifications_active:"]
            + [w.value for w in app.main.warning if w.icon == ":material/warning:"])


@pytest.mark.parametrize("page", PAGES)
def test_every_page_runs_without_an_error_block_on_a_real_mlflow_server(teammate_app, page):
    app = AppTest.from_file(APP, default_timeout=120)
    app.run()
    # No roles record on this shared server: nobody is admin, and the sidebar says why.
    assert any("everyone is a viewer" in w.value for w in app.sidebar.warning)
    assert "viewer" in " ".join(m.value for m in app.sidebar.markdown)
    app.switch_page(page)
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    assert not _problems(app), _problems(app)
    # The store has content: no page may suggest the demo seeder, which refuses a non-empty store.
    texts = " ".join(m.value for m in [*app.markdown, *app.info, *app.warning, *app.caption])
    assert "demo.seed" not in texts
    if page == "pages/monitoring.py":  # the trace figures were read through the server (page size caps)
        assert any(m.label == "Requests" and m.value == "6" for m in app.metric), [m.value for m in app.metric]


def test_an_admin_grants_a_role_on_the_overview_and_a_teammate_has_it(teammate_app, shared_server, tmp_path):
    """Runs last in this module: it gives the server its first roles."""
    import getpass

    from services import roles
    from services.identity import Identity, IdentitySource
    from services.settings import load_settings

    settings, _ = shared_server
    roles.init_roles(getpass.getuser(), settings, by="test")
    app = AppTest.from_file(APP, default_timeout=120)
    app.run()
    assert not [w for w in app.sidebar.warning if "everyone is a viewer" in w.value]
    next(t for t in app.text_input if t.label.startswith("User")).input("Bo@Example.com")
    next(s for s in app.selectbox if s.label == "Role").select("operator")
    next(b for b in app.button if b.label == "Review grant").click().run()
    assert any("bo@" in m.value and "→ **operator**" in m.value for m in app.markdown)
    assert roles.local_role(Identity("bo@example.com", "bo", IdentitySource.OS_USER), settings) is roles.Role.VIEWER
    next(b for b in app.button if b.label == "Grant role").click().run()
    assert any("bo@example.com is now operator" in s.value for s in app.success)
    assert not app.exception and not _problems(app), _problems(app)
    other = load_settings({"AGENTOPS_BACKEND": "mlflow", "AGENTOPS_MLFLOW_URI": settings.mlflow_uri,
                           "AGENTOPS_DATA_DIR": str(tmp_path / "bo")})
    bo = Identity("bo@example.com", "bo", IdentitySource.OS_USER)
    assert roles.local_role(bo, other) is roles.Role.OPERATOR
