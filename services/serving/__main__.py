"""``python -m services.serving``: the child side of ``run_agents_call`` (one databricks-agents operation)."""

from services.serving.agents_child import child_main

raise SystemExit(child_main())
