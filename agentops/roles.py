"""``python -m agentops roles``: show the roles stored with the team's data, or set the first admin.

On a shared ``mlflow server`` without a roles record everyone is a viewer; whoever runs the server
(or any teammate with access to it, as MLflow's open-source server has no authentication) sets the
first admin once with ``init``; admins grant further roles in the app.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from typing import TextIO


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m agentops roles", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("show", help="print the roles in force and where they come from")
    init = sub.add_parser("init", help="set the first admin of a store that has no roles yet")
    init.add_argument("--admin", required=True, help="the first admin's user name or email")
    return parser


def main(argv: list[str] | None = None, *, out: TextIO | None = None) -> int:
    from services import roles
    from services.errors import AgentOpsError
    from services.settings import load_settings

    out = out or sys.stdout
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
        if args.action == "init":
            try:
                by = getpass.getuser()
            except Exception:  # noqa: BLE001 - no passwd entry in some containers
                by = "agentops-cli"
            table = roles.init_roles(args.admin, settings, by=by)
            print(f"{args.admin} is now admin on {settings.workspace_label}; everyone else is a viewer "
                  "until an admin grants them a role.", file=out)
            return 0
        table, source, version = roles.roles_table(settings)
        print(json.dumps({"source": source.value, "version": version, "roles": table}, indent=2), file=out)
        return 0
    except AgentOpsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
