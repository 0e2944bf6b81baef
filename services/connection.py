"""The connection a page run works through: configure MLflow, act for a user, check the store.

The public face of ``services._clients`` for pages and components; the client factories behind it stay
private to the services package.
"""

from __future__ import annotations

from services._clients import act_as, acting_identity, check_connection, configure_mlflow

__all__ = ["act_as", "acting_identity", "check_connection", "configure_mlflow"]
