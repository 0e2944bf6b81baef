"""Prompt-registry versions an agent version uses, and a text diff of them between two versions.

MLflow 3 records the link itself: ``mlflow.genai.load_prompt(..., model_id=...)`` (or loading a
prompt while a model is active) tags the LoggedModel, and loading one inside a run tags the run,
with ``mlflow.linkedPrompts`` = ``[{"name": ..., "version": ...}]``. A registered version's
LoggedModel (its ``models:/m-<id>`` source) and source run are read for that tag; no convention of
this app is involved. The prompt's text comes from ``MlflowClient.get_prompt_version``, which
(unlike ``load_prompt``) links nothing, so reading never writes.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from typing import Any

from services._clients import mlflow_client, translate_errors
from services.errors import NotFoundError
from services.settings import Settings
from services.versions import check_agent_name, check_version, model_id_of

LINKED_PROMPTS_TAG = "mlflow.linkedPrompts"


@dataclass(frozen=True)
class PromptRef:
    """One prompt version a version uses; ``template`` is its text (chat prompts as JSON), or None
    with ``problem`` saying why it could not be read."""

    name: str
    version: str
    template: str | None
    linked_from: str  # "LoggedModel" or "run"
    problem: str | None = None

    @property
    def label(self) -> str:
        return f"{self.name} v{self.version}"


@dataclass(frozen=True)
class PromptChange:
    """A prompt as two versions use it: same, changed, or used by one side only."""

    name: str
    left: PromptRef | None
    right: PromptRef | None

    @property
    def status(self) -> str:
        if self.left is None:
            return "only right"
        if self.right is None:
            return "only left"
        if self.left.version == self.right.version:
            return "same version"
        return "same text" if self.left.template == self.right.template else "changed"

    @property
    def diff(self) -> str:
        """A unified diff of the two texts ('' when one side has none or they are equal)."""
        if self.left is None or self.right is None or self.left.template is None or self.right.template is None:
            return ""
        lines = difflib.unified_diff(
            self.left.template.splitlines(), self.right.template.splitlines(),
            fromfile=self.left.label, tofile=self.right.label, lineterm="",
        )
        return "\n".join(lines)


def _parse(tag: str | None) -> list[tuple[str, str]]:
    try:
        raw = json.loads(tag or "[]")
    except (TypeError, ValueError):
        return []
    out = []
    for entry in raw if isinstance(raw, list) else []:
        if isinstance(entry, dict) and entry.get("name") and entry.get("version") is not None:
            out.append((str(entry["name"]), str(entry["version"])))
    return out


def _template(client: Any, name: str, version: str) -> tuple[str | None, str | None]:
    try:
        with translate_errors(f"prompt {name} v{version}"):
            found = client.get_prompt_version(name, version)
    except NotFoundError:
        found = None
    if found is None:
        return None, f"{name} v{version} is no longer in the prompt registry"
    template = found.template
    return (template if isinstance(template, str) else json.dumps(template, indent=1, ensure_ascii=False)), None


def linked_prompts(name: str, version: str | int, settings: Settings | None = None) -> tuple[PromptRef, ...]:
    """The prompt versions a registered version uses: from its LoggedModel, then its source run."""
    name, number = check_agent_name(name), check_version(version)
    client = mlflow_client(settings)
    with translate_errors(f"version {number} of {name!r}"):
        mv = client.get_model_version(name, number)
    found: dict[tuple[str, str], str] = {}
    model_id = getattr(mv, "model_id", None) or model_id_of(mv.source)
    if model_id:
        try:
            with translate_errors(f"LoggedModel {model_id}"):
                model = client.get_logged_model(model_id)
            for ref in _parse((getattr(model, "tags", None) or {}).get(LINKED_PROMPTS_TAG)):
                found.setdefault(ref, "LoggedModel")
        except NotFoundError:
            pass
    if mv.run_id:
        try:
            with translate_errors(f"run {mv.run_id}"):
                run = client.get_run(mv.run_id)
            for ref in _parse(run.data.tags.get(LINKED_PROMPTS_TAG)):
                found.setdefault(ref, "run")
        except NotFoundError:
            pass
    refs = []
    for (prompt, prompt_version), source in sorted(found.items(), key=lambda kv: (kv[0][0], int(kv[0][1]) if kv[0][1].isdigit() else 0)):
        template, problem = _template(client, prompt, prompt_version)
        refs.append(PromptRef(prompt, prompt_version, template, source, problem))
    return tuple(refs)


def prompt_changes(name: str, left: str | int, right: str | int, settings: Settings | None = None) -> tuple[PromptChange, ...]:
    """Each prompt either version uses, paired by prompt name (a prompt linked twice pairs its newest)."""
    a = {ref.name: ref for ref in linked_prompts(name, left, settings)}
    b = {ref.name: ref for ref in linked_prompts(name, right, settings)}
    return tuple(PromptChange(prompt, a.get(prompt), b.get(prompt)) for prompt in sorted(set(a) | set(b)))
