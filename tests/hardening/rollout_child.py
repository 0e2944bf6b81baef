"""``python -m tests.hardening.rollout_child <requests> <challenger errors> <champion errors>``: one look of the
rollout controller in its own process, as the background worker's rollout task makes it.

The app's settings come from the environment (``AGENTOPS_BACKEND``, ``AGENTOPS_MLFLOW_URI``, ...); the ports
are the real ``ServicePorts`` with only the arms' evidence given on the command line (the fault tests kill
this process mid-action, so what matters is the action, not the statistics).
"""

from __future__ import annotations

import sys

from services import rollout_controller
from services._clients import configure_mlflow, get_settings
from services.rollout_ports import ServicePorts
from services.rollouts import Baseline
from tests.services.rollout_world import error_rate_evidence

CLEAR = (20_000, 1_000, 1_000)  # requests per arm, challenger errors, champion errors
BREACH = (2_000, 400, 100)


class GivenEvidencePorts(ServicePorts):
    """The real ports, with both arms' error-rate samples given (requests per arm, challenger and champion errors)."""

    def __init__(self, settings, given: tuple[int, int, int] = CLEAR) -> None:
        super().__init__(settings)
        self.given = given

    def baseline(self, plan):
        return Baseline()

    def evidence(self, plan, baseline, since, until):
        return error_rate_evidence(*self.given)


def main(argv: list[str]) -> int:
    settings = get_settings()
    configure_mlflow(settings)
    looked = rollout_controller.tick(settings, GivenEvidencePorts(settings, tuple(int(a) for a in argv[:3])))
    print(looked, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
