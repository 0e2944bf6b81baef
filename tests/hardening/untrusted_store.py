"""A store whose every user-visible string an attacker could control carries a script/HTML/markdown payload.

Shared by ``test_untrusted_content.py`` (and runnable alone to look at the app by hand:
``python -m tests.hardening.untrusted_store <data dir> <pixel url>``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import mlflow

MARK = "PAYLOAD-7F3A"
AGENT = "untrusted-agent"


def payload(where: str, pixel: str) -> str:
    """Every injection style at once; ``where`` names the field so a hit says where it came from."""
    return (
        f"{MARK}-{where} <script>window.__pwned='script-{where}'</script> "
        f"<img src=\"{pixel}/img-{where}\" onerror=\"window.__pwned='img-{where}'\"> "
        f"[link-{where}](javascript:window.__pwned='md-{where}') ![pix-{where}]({pixel}/md-{where}.png) "
        f"[web-{where}]({pixel}/web-{where}) <a href=\"{pixel}/a-{where}\">a-{where}</a> "
        f"<svg onload=\"window.__pwned='svg-{where}'\"></svg> <iframe src=\"javascript:window.__pwned='if-{where}'\"></iframe> "
        f"**bold-{where}** ` backtick-{where}"
    )


class _Echo(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


def build(data_dir: Path, pixel: str) -> dict:
    """Fill ``data_dir`` with an agent, versions, a trace, a review, a queue and an audit record, all with payloads."""
    from mlflow import MlflowClient

    from services import _mlflow_internal as internal
    from services import feedback as fb
    from services import releases, serving
    from services.promotion import PromotionRequest
    from services import review_queue as rq
    from services._clients import configure_mlflow, get_or_create_experiment
    from services.identity import Identity, IdentitySource
    from services.registry import EXPERIMENT_TAG, GIT_COMMIT_TAG
    from services.settings import load_settings
    from services.traces import AGENT_TAG, ARM_TAG, ENDPOINT_TAG, VERSION_TAG

    settings = configure_mlflow(load_settings({"AGENTOPS_DATA_DIR": str(data_dir)}))
    client = MlflowClient(settings.tracking_uri, settings.registry_uri)
    who = Identity("owner@example.com", "owner", IdentitySource.DATABRICKS_APPS)
    experiment_id = get_or_create_experiment(client, f"agentops-{AGENT}", settings)
    for number in (1, 2):
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"build v{number}"):
            mlflow.pyfunc.log_model(name="agent", python_model=_Echo(), registered_model_name=AGENT,
                                    pip_requirements=["mlflow"], params={"prompt": payload(f"param{number}", pixel)})
        client.update_model_version(AGENT, str(number), description=payload(f"desc{number}", pixel))
        client.set_model_version_tag(AGENT, str(number), GIT_COMMIT_TAG, "`" + payload(f"commit{number}", pixel))
        client.set_model_version_tag(AGENT, str(number), "note", payload(f"vtag{number}", pixel))
        with mlflow.start_run(experiment_id=experiment_id, run_name=payload(f"evalrun{number}", pixel)[:200],
                              tags={"mlflow.runType": "genai_evaluate", "agentops.agent": AGENT,
                                    "agentops.version": str(number), "agentops.dataset": payload("dataset", pixel)}):
            mlflow.log_metric("expected_facts/mean", 0.5 + number / 10)
    client.update_registered_model(AGENT, description=payload("model", pixel))
    client.set_registered_model_tag(AGENT, EXPERIMENT_TAG, experiment_id)
    releases.promote(PromotionRequest(AGENT, "champion", 1, reason=payload("reason1", pixel)), who, settings=settings)
    releases.promote(PromotionRequest(AGENT, "champion", 2, reason=payload("reason2", pixel)), who, settings=settings)
    serving.save_local_endpoint(serving.Endpoint(
        "untrusted-prod", served=(serving.ServedVersion(f"{AGENT}_1", AGENT, "1"),),
        routes=(serving.TrafficRoute(f"{AGENT}_1", 100),), state=serving.EndpointState.READY), settings)
    # An endpoint name is operator-typed, but it lands in plotly labels, which render links.
    serving.save_local_endpoint(serving.Endpoint(
        f"ep <a href=\"{pixel}/a-ep\">a-ep</a> <b>b-ep</b> [web-ep]({pixel}/web-ep)",
        served=(serving.ServedVersion(f"{AGENT}_2", AGENT, "2"),), routes=(serving.TrafficRoute(f"{AGENT}_2", 100),),
        state=serving.EndpointState.READY), settings)

    now = time.time_ns()
    start = now - 120_000_000_000
    llm = internal.SpanSpec("call " + payload("span", pixel), "CHAT_MODEL", start + 1_000_000, start + 5_000_000,
                            inputs={"messages": [{"role": "user", "content": payload("llmin", pixel)}]},
                            outputs=payload("llmout", pixel),
                            attributes={"mlflow.llm.model": payload("model-attr", pixel),
                                        "custom.attr": payload("attr", pixel)})
    tool = internal.SpanSpec("lookup", "TOOL", start + 6_000_000, start + 8_000_000,
                             inputs={"q": payload("toolin", pixel)}, outputs=payload("toolout", pixel),
                             error=payload("err", pixel))
    root = internal.SpanSpec(
        "predict", "AGENT", start, start + 20_000_000,
        inputs={"input": [{"role": "user", "content": payload("q", pixel)}]},
        outputs={"output": [{"type": "message", "content": [{"type": "output_text", "text": payload("a", pixel)}]}]},
        children=(llm, tool),
    )
    tags = {AGENT_TAG: AGENT, VERSION_TAG: "2", ARM_TAG: payload("arm", pixel)[:240], ENDPOINT_TAG: "untrusted-prod",
            "custom.tag": payload("tag", pixel)}
    # A second trace whose agent and version tags are payloads (tags are set by whatever logs the trace).
    tagged_root = internal.SpanSpec("predict", "AGENT", start - 40_000_000_000, start - 39_990_000_000,
                                    inputs={"input": [{"role": "user", "content": "plain question"}]},
                                    outputs="plain answer")
    # The agent tag names a registered model (which may not hold '/' or ':', so its URLs are relative); the
    # model exists, because the Review page cannot open a trace whose agent is not registered.
    agent_tag = f"zz {MARK}-agenttag ![pix-agenttag](pix-agenttag.png) [web-agenttag](web-agenttag) **bold**"
    client.create_registered_model(agent_tag, description=payload("model2", pixel))
    tagged = {AGENT_TAG: agent_tag, VERSION_TAG: payload("vertag", pixel)[:240]}
    trace_ids = internal.log_traces(client, [internal.TraceSpec(experiment_id, root, tags=tags),
                                             internal.TraceSpec(experiment_id, tagged_root, tags=tagged)])
    fb.submit_review(trace_ids[0], fb.Review(thumbs_up=False, rating=1, comment=payload("comment", pixel),
                                             corrected_answer=payload("corrected", pixel)),
                     "earlier@example.com", settings=settings)
    tag_queue = rq.create_queue(rq.QueueSpec("tags queue", rq.QueueSource.HAND_PICKED, (experiment_id,),
                                             trace_ids=(trace_ids[1],)), who.user, settings)
    queue = rq.create_queue(rq.QueueSpec(payload("queue", pixel)[:90].replace("\n", " "), rq.QueueSource.HAND_PICKED,
                                         (experiment_id,), agent=AGENT, trace_ids=(trace_ids[0],),
                                         description=payload("qdesc", pixel)), who.user, settings)
    return {"settings": settings, "trace_ids": trace_ids, "queue": queue, "tag_queue": tag_queue,
            "experiment_id": experiment_id}


if __name__ == "__main__":  # pragma: no cover - a hand tool
    print(build(Path(sys.argv[1]), sys.argv[2]))
