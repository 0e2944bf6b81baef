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
