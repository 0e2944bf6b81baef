"""Command-line entry points of Agent Ops Console (``python -m agentops <command>``)."""
