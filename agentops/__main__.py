"""``python -m agentops <command> ...``: dispatch to a command module."""

from __future__ import annotations

import sys

USAGE = """usage: python -m agentops <command> [options]

commands:
  gate    evaluate the release gate and readiness checklist of a version (exit 1 when blocked)
  roles   show the team's roles, or set the first admin of a shared store (`roles init --admin USER`)
  worker  run the background tasks (live scoring) beside the gateway; local and mlflow backends
"""


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "gate":
        from agentops import gate

        return gate.main(rest)
    if command == "roles":
        from agentops import roles

        return roles.main(rest)
    if command == "worker":
        from agentops import worker

        return worker.main(rest)
    print(f"unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
