import re
from pathlib import Path
from types import SimpleNamespace

import yaml
import pytest

from services.errors import ConfigurationError
from services.settings import Backend, load_settings


def test_local_is_the_default(tmp_path):
    settings = load_settings({"AGENTOPS_DATA_DIR": str(tmp_path)})
    assert settings.backend is Backend.LOCAL
    assert settings.tracking_uri == f"sqlite:///{tmp_path}/mlflow.db"
    assert settings.registry_uri == settings.tracking_uri
    assert settings.artifact_root == tmp_path / "artifacts"


def test_databricks_uses_unity_catalog():
    settings = load_settings({"AGENTOPS_BACKEND": "databricks", "DATABRICKS_HOST": "adb-1.azuredatabricks.net"})
    assert (settings.tracking_uri, settings.registry_uri) == ("databricks", "databricks-uc")
    assert settings.databricks_host == "https://adb-1.azuredatabricks.net"


def test_remote_mlflow_server_by_uri():
    settings = load_settings({"AGENTOPS_BACKEND": "mlflow", "AGENTOPS_MLFLOW_URI": "http://127.0.0.1:5000"})
    assert settings.tracking_uri == settings.registry_uri == "http://127.0.0.1:5000"


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"AGENTOPS_BACKEND": "mlflow"}, "AGENTOPS_MLFLOW_URI"),
        ({"AGENTOPS_BACKEND": "databricks"}, "DATABRICKS_HOST"),
        ({"AGENTOPS_BACKEND": "postgres"}, "AGENTOPS_BACKEND"),
    ],
)
def test_missing_or_bad_setting_names_the_variable(environ, named):
    with pytest.raises(ConfigurationError, match=named):
        load_settings(environ)


def test_experiment_ids_are_parsed():
    settings = load_settings({"AGENTOPS_EXPERIMENT_IDS": " 12, 34 ,,"})
    assert settings.experiment_ids == ("12", "34")


def test_missing_databricks_app_variables_are_named():
    from services.settings import missing_databricks_env

    env = {"AGENTOPS_BACKEND": "databricks", "DATABRICKS_HOST": "https://x", "DATABRICKS_CLIENT_ID": "id"}
    assert missing_databricks_env(env) == ["DATABRICKS_CLIENT_SECRET", "AGENTOPS_EXPERIMENT_IDS"]
    assert missing_databricks_env({"AGENTOPS_BACKEND": "local"}) == []


# --- app.yaml and databricks.yml against services/settings.py ------------------------------------

ROOT = Path(__file__).resolve().parents[2]


class _Recording(dict):
    """An environment that notes every variable read from it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.read: set[str] = set()

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)


def _app_yaml() -> dict:
    return yaml.safe_load((ROOT / "app.yaml").read_text(encoding="utf-8"))


def _bundle_app() -> dict:
    bundle = yaml.safe_load((ROOT / "databricks.yml").read_text(encoding="utf-8"))
    (app,) = bundle["resources"]["apps"].values()
    return app


def _app_yaml_env() -> dict[str, dict]:
    return {entry["name"]: entry for entry in _app_yaml()["env"]}


def _everything_settings_reads(environ: dict) -> set[str]:
    """Every variable the app's settings read, at start-up and per call (roles)."""
    from services import roles

    env = _Recording(environ)
    settings = load_settings(env)
    roles.user_authorization_required(env)
    roles.roles_file(settings, env)
    roles.databricks_role(None, SimpleNamespace(current_user=SimpleNamespace(
        me=lambda: SimpleNamespace(groups=[]))), env)
    return env.read


def test_every_app_yaml_variable_is_declared_and_read_by_settings():
    from services.settings import VARIABLES

    declared = {v.name for v in VARIABLES}
    env = {name: e.get("value") or "1" for name, e in _app_yaml_env().items()} | {"DATABRICKS_HOST": "https://x"}
    read = _everything_settings_reads(env)
    for name in _app_yaml_env():
        assert name in declared, f"app.yaml sets {name}, which services/settings.py does not declare"
        assert name in read, f"app.yaml sets {name}, which nothing in services/settings.py reads"


def test_the_readme_table_lists_every_declared_variable():
    from services.settings import VARIABLES

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    listed = set(re.findall(r"^\| `(AGENTOPS_[A-Z_]+)` \|", readme, flags=re.M))
    declared = {v.name for v in VARIABLES if v.name.startswith("AGENTOPS_")}  # the others are MLflow's, the SDK's
    assert declared <= listed, f"README's variable table misses {sorted(declared - listed)}"
    # The rest are read by the shell scripts only (scripts/run), not by the app.
    assert listed - declared <= {"AGENTOPS_PORT", "AGENTOPS_WORKER"}, sorted(listed - declared)


def test_every_required_databricks_setting_has_a_source():
    from services.settings import VARIABLES, Source

    env_entries = _app_yaml_env()
    for variable in VARIABLES:
        if variable.required_on_databricks and variable.source is Source.APP_YAML:
            assert variable.name in env_entries, f"{variable.name} is required on Databricks but app.yaml has no source"
        if variable.source is Source.APP_YAML and variable.name in env_entries:
            entry = env_entries[variable.name]
            assert entry.get("value") or entry.get("valueFrom"), f"{variable.name} has an empty entry in app.yaml"
    # The app starts from app.yaml plus what the platform injects, and its audit trail is writable there.
    platform = {v.name: "x" for v in VARIABLES if v.source is Source.PLATFORM}
    values = {name: e.get("value") or f"<{e['valueFrom']}>" for name, e in env_entries.items()}
    settings = load_settings({**platform, **values})
    assert settings.backend is Backend.DATABRICKS
    assert settings.audit_experiment_id or settings.audit_experiment.startswith("/")


def test_every_declared_resource_is_used_and_every_valuefrom_is_declared():
    resources = {r["name"] for r in _bundle_app()["resources"]}
    used = {e["valueFrom"] for e in _app_yaml_env().values() if "valueFrom" in e}
    assert used <= resources, f"app.yaml reads resources databricks.yml does not declare: {used - resources}"
    assert resources <= used, f"databricks.yml declares resources nothing reads: {resources - used}"


def test_user_scopes_are_documented_apps_scopes_and_cover_every_user_token_call():
    from services import _clients

    declared = set(_bundle_app()["user_api_scopes"])
    assert declared <= _clients.APPS_USER_SCOPES, f"not a Databricks Apps user scope: {declared - _clients.APPS_USER_SCOPES}"
    needed = set(_clients.USER_TOKEN_CALLS)
    assert needed <= declared, f"the app calls with the user's token outside the declared scopes: {needed - declared}"


@pytest.mark.parametrize("name", ["agentops-audit", "audit/relative"])
def test_a_relative_audit_experiment_name_is_refused_on_databricks(name):
    env = {"AGENTOPS_BACKEND": "databricks", "DATABRICKS_HOST": "https://x", "AGENTOPS_AUDIT_EXPERIMENT": name}
    with pytest.raises(ConfigurationError, match="AGENTOPS_AUDIT_EXPERIMENT.*absolute"):
        load_settings(env)
    assert load_settings({**env, "AGENTOPS_AUDIT_EXPERIMENT_ID": "123"}).audit_experiment_id == "123"


def test_databricks_defaults_to_a_workspace_path_for_the_audit_trail():
    settings = load_settings({"AGENTOPS_BACKEND": "databricks", "DATABRICKS_HOST": "https://x"})
    assert settings.audit_experiment == "/Shared/agentops-audit"
    assert load_settings({}).audit_experiment == "agentops-audit"


def test_only_settings_reads_the_environment_for_app_configuration():
    offenders = []
    for path in sorted((ROOT / "services").rglob("*.py")):
        if path.name == "settings.py":
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"os\.environ(\.get)?\s*[\[(]\s*[\"'](AGENTOPS_|DATABRICKS_APP|OPENAI_|MLFLOW_TRACKING_)", line) \
                    or re.search(r"os\.getenv\(", line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "read these through services.settings:\n" + "\n".join(offenders)


def test_an_undeclared_variable_cannot_be_read():
    from services.settings import read

    with pytest.raises(KeyError, match="not declared"):
        read("AGENTOPS_SOMETHING_NEW", {})


def test_the_throttling_bound_is_validated():
    assert load_settings({"AGENTOPS_DATABRICKS_RETRY_SECONDS": "5"}).retry_timeout_seconds == 5
    with pytest.raises(ConfigurationError, match="AGENTOPS_DATABRICKS_RETRY_SECONDS"):
        load_settings({"AGENTOPS_DATABRICKS_RETRY_SECONDS": "forever"})
