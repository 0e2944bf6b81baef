"""Demo agents and datasets for Agent Ops Console."""
