"""LoRAModel status: Ready means clients get answers from the current spec, and the
conditions say why not, in words a user can act on."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from lorafleet_operator.model import AdapterRank, CatalogSnapshot, LoRAModel
from lorafleet_operator.status import compute_loramodel_status, invalid_spec_status
from lorafleet_operator.status.conditions import find_condition

T0 = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)
DEBOUNCE = 30.0

GPU_MESSAGE = (
    "Deployment 'LLMServer:qwen' in application 'lorafleet' has 1 replicas that have taken "
    "more than 30s to be scheduled. Resources required for each replica: "
    "[{'CPU': 1.0, 'GPU': 1.0}], total resources available: {'CPU': 8.0}."
)


def model(**spec: Any) -> LoRAModel:
    return LoRAModel.from_object(
        {
            "metadata": {"name": "qwen", "namespace": "demo", "uid": "u", "generation": 3},
            "spec": {"baseModel": {"source": "Qwen/Qwen2.5-7B-Instruct"}, **spec},
        }
    )


def serving_rayservice() -> dict[str, Any]:
    """A RayService as KubeRay reports it when everything serves."""
    return {
        "metadata": {"name": "qwen", "namespace": "demo", "generation": 2},
        "status": {
            "observedGeneration": 2,
            "numServeEndpoints": 2,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "NonZeroServeEndpoints",
                    "message": "Number of serve endpoints is greater than 0",
                    "lastTransitionTime": "2026-11-22T11:00:00Z",
                },
                {
                    "type": "UpgradeInProgress",
                    "status": "False",
                    "reason": "NoPendingCluster",
                    "message": "No pending cluster exists",
                    "lastTransitionTime": "2026-11-22T11:00:00Z",
                },
            ],
            "activeServiceStatus": {
                "applicationStatuses": {
                    "lorafleet": {
                        "status": "RUNNING",
                        "serveDeploymentStatuses": {
                            "LLMServer:qwen": {"status": "HEALTHY"},
                            "OpenAiIngress": {"status": "HEALTHY"},
                        },
                    }
                }
            },
        },
    }


def status_of(
    lm: LoRAModel | None = None,
    rayservice: dict[str, Any] | None = None,
    snapshots: list[CatalogSnapshot] | None = None,
    previous: dict[str, Any] | None = None,
    now: datetime = T0,
) -> dict[str, Any]:
    return compute_loramodel_status(
        lm or model(),
        rayservice,
        snapshots or [],
        previous,
        now=now,
        debounce_seconds=DEBOUNCE,
    )


def condition(status: dict[str, Any], condition_type: str) -> dict[str, Any]:
    found = find_condition(status["conditions"], condition_type)
    assert found is not None, f"no {condition_type} condition"
    return dict(found)


def set_app(rayservice: dict[str, Any], app_status: str, message: str = "") -> None:
    app = rayservice["status"]["activeServiceStatus"]["applicationStatuses"]["lorafleet"]
    app["status"] = app_status
    app["message"] = message


def set_kuberay_condition(rayservice: dict[str, Any], condition_type: str, value: str) -> None:
    for entry in rayservice["status"]["conditions"]:
        if entry["type"] == condition_type:
            entry["status"] = value


# ---------------------------------------------------------------- Ready


def test_serving_rayservice_makes_the_loramodel_ready() -> None:
    status = status_of(rayservice=serving_rayservice())
    ready = condition(status, "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "Serving")
    assert "http://qwen.demo.svc:8000/v1" in ready["message"]
    assert condition(status, "Progressing")["status"] == "False"
    assert condition(status, "Degraded")["status"] == "False"
    assert status["observedGeneration"] == 3
    assert all(c["observedGeneration"] == 3 for c in status["conditions"])
    assert status["rayServiceName"] == "qwen"
    assert status["endpoint"] == "http://qwen.demo.svc:8000/v1"
    assert status["modelId"] == "qwen"
    assert status["maxLoraRank"] == 16


def _not_ready_kuberay(rs: dict[str, Any]) -> None:
    set_kuberay_condition(rs, "Ready", "False")


def _upgrading(rs: dict[str, Any]) -> None:
    set_kuberay_condition(rs, "UpgradeInProgress", "True")


def _stale(rs: dict[str, Any]) -> None:
    rs["metadata"]["generation"] = 3


def _deploying(rs: dict[str, Any]) -> None:
    set_app(rs, "DEPLOYING")


def _no_endpoints(rs: dict[str, Any]) -> None:
    rs["status"]["numServeEndpoints"] = 0


def _no_application(rs: dict[str, Any]) -> None:
    rs["status"]["activeServiceStatus"]["applicationStatuses"] = {}


def _other_app_failing(rs: dict[str, Any]) -> None:
    rs["status"]["activeServiceStatus"]["applicationStatuses"]["other"] = {"status": "DEPLOYING"}


SIGNALS = {
    "KubeRay not Ready": (_not_ready_kuberay, "RayServiceNotReady"),
    "upgrade in progress": (_upgrading, "UpgradeInProgress"),
    "observedGeneration behind": (_stale, "RayServiceReconciling"),
    "application deploying": (_deploying, "ApplicationNotRunning"),
    "another application not running": (_other_app_failing, "ApplicationNotRunning"),
    "no application yet": (_no_application, "ApplicationNotRunning"),
    "zero serve endpoints": (_no_endpoints, "NoServeEndpoints"),
}


@pytest.mark.parametrize("signal", sorted(SIGNALS))
def test_each_serving_signal_alone_keeps_the_loramodel_not_ready(signal: str) -> None:
    breaks, reason = SIGNALS[signal]
    rayservice = serving_rayservice()
    breaks(rayservice)
    ready = condition(status_of(rayservice=rayservice), "Ready")
    assert (ready["status"], ready["reason"]) == ("False", reason)


def test_missing_rayservice_is_not_ready_and_progressing() -> None:
    status = status_of(rayservice=None)
    assert condition(status, "Ready")["reason"] == "RayServiceMissing"
    progressing = condition(status, "Progressing")
    assert (progressing["status"], progressing["reason"]) == ("True", "Creating")
    assert "demo/qwen" in progressing["message"]


def test_upgrade_shows_as_progressing_with_kuberays_message() -> None:
    rayservice = serving_rayservice()
    _upgrading(rayservice)
    rayservice["status"]["conditions"][1]["message"] = "Pending RayCluster qwen-abc is starting"
    progressing = condition(status_of(rayservice=rayservice), "Progressing")
    assert (progressing["status"], progressing["reason"]) == ("True", "Upgrading")
    assert "Pending RayCluster qwen-abc is starting" in progressing["message"]


def test_scheduling_wait_while_deploying_is_shown_in_progressing() -> None:
    rayservice = serving_rayservice()
    set_app(rayservice, "DEPLOYING")
    deployments = rayservice["status"]["activeServiceStatus"]["applicationStatuses"]["lorafleet"][
        "serveDeploymentStatuses"
    ]
    deployments["LLMServer:qwen"] = {"status": "UPDATING", "message": GPU_MESSAGE}
    status = status_of(rayservice=rayservice)
    progressing = condition(status, "Progressing")
    assert (progressing["status"], progressing["reason"]) == ("True", "Deploying")
    assert "taken more than 30s to be scheduled" in progressing["message"]
    assert condition(status, "Degraded")["status"] == "False"


# ---------------------------------------------------------------- Degraded


def test_failed_serve_deployment_message_reaches_degraded() -> None:
    rayservice = serving_rayservice()
    set_app(rayservice, "DEPLOY_FAILED", GPU_MESSAGE)
    status = status_of(rayservice=rayservice)
    degraded = condition(status, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "ServeDeployFailed")
    assert "application lorafleet is DEPLOY_FAILED" in degraded["message"]
    assert "'GPU': 1.0" in degraded["message"]
    ready = condition(status, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "ServeDeployFailed")
    assert condition(status, "Progressing")["status"] == "False"


def test_unhealthy_deployment_is_named_in_degraded() -> None:
    rayservice = serving_rayservice()
    set_app(rayservice, "UNHEALTHY")
    deployments = rayservice["status"]["activeServiceStatus"]["applicationStatuses"]["lorafleet"][
        "serveDeploymentStatuses"
    ]
    deployments["LLMServer:qwen"] = {"status": "UNHEALTHY", "message": "CUDA out of memory"}
    degraded = condition(status_of(rayservice=rayservice), "Degraded")
    assert degraded["reason"] == "ServeDeployFailed"
    assert (
        "deployment lorafleet/LLMServer:qwen is UNHEALTHY: CUDA out of memory"
        in (degraded["message"])
    )


def test_failure_on_the_new_cluster_during_an_upgrade_is_reported() -> None:
    rayservice = serving_rayservice()
    _upgrading(rayservice)
    rayservice["status"]["pendingServiceStatus"] = {
        "applicationStatuses": {"lorafleet": {"status": "DEPLOY_FAILED", "message": GPU_MESSAGE}}
    }
    degraded = condition(status_of(rayservice=rayservice), "Degraded")
    assert degraded["status"] == "True"
    assert degraded["message"].startswith("new Ray cluster: application lorafleet")


def test_long_serve_messages_are_bounded() -> None:
    rayservice = serving_rayservice()
    set_app(rayservice, "DEPLOY_FAILED", "Traceback: " + "x" * 50_000)
    status = status_of(rayservice=rayservice)
    for entry in status["conditions"]:
        assert len(entry["message"]) <= 1024
    assert condition(status, "Degraded")["message"].endswith("...")


# What Ray 2.60 wrote for a base model source holding no model (the traceback shortened).
REPLICA_TRACEBACK = (
    "The deployment failed to start 3 times in a row. This may be due to a problem with its "
    "constructor or initial health check failing. See controller logs for details. Error:\n"
    "\x1b[36mray::ServeReplica:lorafleet:LoraFleetServer:broken.initialize_and_get_metadata()"
    "\x1b[39m (pid=392, ip=10.244.0.4, actor_id=68c0261)\n"
    + '  File "/usr/lib/python3.11/concurrent/futures/_base.py", line 449, in result\n'
    "    return self.__get_result()\n"
    "           ^^^^^^^^^^^^^^^^^^^\n"
    * 40
    + '  File "ray/llm/_internal/serve/engines/vllm/vllm_engine.py", line 222\n'
    '    raise RuntimeError(f"Failed to create vLLM engine config: {e}") from None\n'
    "RuntimeError: Failed to create vLLM engine config: 1 validation error for ModelConfig\n"
    "  Value error, Invalid repository ID or local directory specified: '/models/broken'.\n"
    "Please verify the following requirements:\n"
    "1. Provide a valid Hugging Face repository ID.\n"
)


def test_a_replica_traceback_is_reported_by_its_error_not_its_first_frames() -> None:
    rayservice = serving_rayservice()
    set_app(rayservice, "DEPLOY_FAILED", "Failed to update the deployments.")
    app = rayservice["status"]["activeServiceStatus"]["applicationStatuses"]["lorafleet"]
    app["serveDeploymentStatuses"] = {
        "LoraFleetServer:qwen": {"status": "DEPLOY_FAILED", "message": REPLICA_TRACEBACK}
    }
    assert len(REPLICA_TRACEBACK) > 2 * 1024
    degraded = condition(status_of(rayservice=rayservice), "Degraded")
    message = degraded["message"]
    assert "deployment lorafleet/LoraFleetServer:qwen is DEPLOY_FAILED: The deployment failed" in (
        message
    )
    assert (
        "Error: RuntimeError: Failed to create vLLM engine config: 1 validation error for "
        "ModelConfig\n  Value error, Invalid repository ID or local directory specified: "
        "'/models/broken'." in message
    )
    assert "\x1b" not in message and "File " not in message


def test_a_message_without_a_traceback_is_kept_as_written() -> None:
    rayservice = serving_rayservice()
    set_app(rayservice, "DEPLOY_FAILED", "ValueError: bad config\nsecond line")
    degraded = condition(status_of(rayservice=rayservice), "Degraded")
    assert degraded["message"].endswith(
        "application lorafleet is DEPLOY_FAILED: ValueError: bad config\nsecond line"
    )


def test_kuberay_validation_failure_is_degraded_with_its_message() -> None:
    rayservice = serving_rayservice()
    ready = rayservice["status"]["conditions"][0]
    ready.update(status="False", reason="ValidationFailed", message="RayService name too long")
    status = status_of(rayservice=rayservice)
    degraded = condition(status, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "RayServiceInvalid")
    assert "RayService name too long" in degraded["message"]
    assert condition(status, "Ready")["reason"] == "RayServiceInvalid"


def test_missing_catalog_is_named_and_blocks_ready() -> None:
    lm = model(catalogs=[{"name": "sales"}, {"name": "support"}])
    snapshots = [
        CatalogSnapshot(name="support", namespace="demo", found=True, rank_histogram={8: 2}),
        CatalogSnapshot.missing("sales", "demo"),
    ]
    status = status_of(lm, serving_rayservice(), snapshots)
    ready = condition(status, "Ready")
    degraded = condition(status, "Degraded")
    assert (ready["status"], ready["reason"]) == ("False", "CatalogNotFound")
    assert (degraded["status"], degraded["reason"]) == ("True", "CatalogNotFound")
    assert "AdapterCatalog demo/sales does not exist" in degraded["message"]
    assert "support" not in degraded["message"]


def test_referenced_catalog_without_a_snapshot_counts_as_missing() -> None:
    lm = model(catalogs=[{"name": "sales"}])
    assert condition(status_of(lm, serving_rayservice()), "Ready")["reason"] == "CatalogNotFound"


# ---------------------------------------------------------------- debounce


def test_ready_survives_a_blip_shorter_than_the_debounce_period() -> None:
    ready_status = status_of(rayservice=serving_rayservice())
    blip = serving_rayservice()
    _no_endpoints(blip)

    during = status_of(rayservice=blip, previous=ready_status, now=T0 + timedelta(seconds=5))
    assert condition(during, "Ready")["status"] == "True"
    assert during["notReadySince"] == "2026-11-22T12:00:05Z"

    later = status_of(rayservice=blip, previous=during, now=T0 + timedelta(seconds=20))
    assert condition(later, "Ready")["status"] == "True"
    assert later["notReadySince"] == "2026-11-22T12:00:05Z"

    recovered = status_of(
        rayservice=serving_rayservice(), previous=later, now=T0 + timedelta(seconds=25)
    )
    assert condition(recovered, "Ready") == condition(ready_status, "Ready")
    assert "notReadySince" not in recovered


def test_ready_turns_false_once_not_ready_signals_persist() -> None:
    ready_status = status_of(rayservice=serving_rayservice())
    outage = serving_rayservice()
    _no_endpoints(outage)
    first = status_of(rayservice=outage, previous=ready_status, now=T0 + timedelta(seconds=5))
    flipped = status_of(rayservice=outage, previous=first, now=T0 + timedelta(seconds=35))
    ready = condition(flipped, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "NoServeEndpoints")
    assert ready["lastTransitionTime"] == "2026-11-22T12:00:35Z"
    assert "notReadySince" not in flipped


def test_missing_catalog_is_not_debounced() -> None:
    lm = model(catalogs=[{"name": "sales"}])
    found = [CatalogSnapshot(name="sales", namespace="demo", found=True)]
    ready_status = status_of(lm, serving_rayservice(), found)
    assert condition(ready_status, "Ready")["status"] == "True"
    gone = status_of(
        lm,
        serving_rayservice(),
        [CatalogSnapshot.missing("sales", "demo")],
        ready_status,
        now=T0 + timedelta(seconds=1),
    )
    assert condition(gone, "Ready")["reason"] == "CatalogNotFound"


def test_not_ready_from_the_start_is_reported_at_once() -> None:
    rayservice = serving_rayservice()
    _deploying(rayservice)
    status = status_of(rayservice=rayservice)
    assert condition(status, "Ready")["status"] == "False"
    assert "notReadySince" not in status


# ---------------------------------------------------------------- conditions over time


def test_last_transition_time_moves_only_when_the_status_flips() -> None:
    creating = status_of(rayservice=None)
    deploying_rs = serving_rayservice()
    _deploying(deploying_rs)
    deploying = status_of(
        rayservice=deploying_rs, previous=creating, now=T0 + timedelta(seconds=60)
    )
    ready_before = condition(creating, "Ready")
    ready_after = condition(deploying, "Ready")
    assert ready_after["reason"] != ready_before["reason"]
    assert ready_after["lastTransitionTime"] == ready_before["lastTransitionTime"]
    serving = status_of(
        rayservice=serving_rayservice(), previous=deploying, now=T0 + timedelta(minutes=5)
    )
    assert condition(serving, "Ready")["lastTransitionTime"] == "2026-11-22T12:05:00Z"


def test_same_observations_give_the_same_status() -> None:
    # Handlers patch status only when it changed; recomputing must not invent a change.
    first = status_of(rayservice=serving_rayservice())
    again = status_of(
        rayservice=serving_rayservice(), previous=first, now=T0 + timedelta(minutes=10)
    )
    assert again == first


def test_conditions_of_others_are_kept() -> None:
    previous = {
        "conditions": [
            {
                "type": "example.com/Audited",
                "status": "True",
                "reason": "Checked",
                "message": "",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            }
        ]
    }
    status = status_of(rayservice=serving_rayservice(), previous=previous)
    assert status["conditions"][0] == previous["conditions"][0]
    assert [c["type"] for c in status["conditions"][1:]] == ["Ready", "Progressing", "Degraded"]


# ---------------------------------------------------------------- adapters


def test_adapters_above_an_explicit_rank_are_counted_and_named_incompatible() -> None:
    lm = model(catalogs=[{"name": "legal"}], engine={"maxLoraRank": 16})
    adapters = (
        AdapterRank(name="contracts", rank=8),
        AdapterRank(name="nda", rank=16),
        AdapterRank(name="patents", rank=64),
        AdapterRank(name="case-law", rank=128),
    )
    snapshots = [
        CatalogSnapshot(
            name="legal",
            namespace="demo",
            found=True,
            rank_histogram={8: 10, 16: 5, 64: 3, 128: 1},
            adapters=adapters,
        )
    ]
    status = status_of(lm, serving_rayservice(), snapshots)
    assert status["maxLoraRank"] == 16
    assert status["adapters"] == {
        "served": 15,
        "incompatible": 4,
        "incompatibleNames": ["case-law", "patents"],
    }
    assert "with 15 adapters" in condition(status, "Ready")["message"]


def test_incompatible_names_are_bounded() -> None:
    lm = model(catalogs=[{"name": "big"}], engine={"maxLoraRank": 8})
    adapters = tuple(AdapterRank(name=f"a{i:03d}", rank=64) for i in range(100))
    snapshots = [
        CatalogSnapshot(
            name="big", namespace="demo", found=True, rank_histogram={64: 5000}, adapters=adapters
        )
    ]
    status = status_of(lm, serving_rayservice(), snapshots)
    assert status["adapters"]["incompatible"] == 5000
    assert len(status["adapters"]["incompatibleNames"]) == 20


def test_derived_rank_serves_every_valid_adapter() -> None:
    lm = model(catalogs=[{"name": "legal"}])
    snapshots = [
        CatalogSnapshot(name="legal", namespace="demo", found=True, rank_histogram={8: 4, 64: 2})
    ]
    status = status_of(lm, serving_rayservice(), snapshots)
    assert status["maxLoraRank"] == 64
    assert status["adapters"]["served"] == 6
    assert status["adapters"]["incompatible"] == 0


def _mixed_catalog(**fields: Any) -> CatalogSnapshot:
    # 10 valid adapters: 6 vLLM can serve (ranks 8 and 64), 3 with modules_to_save (peft
    # only, one named in the sample), 1 DoRA (neither engine).
    return CatalogSnapshot(
        name="legal",
        namespace="demo",
        found=True,
        rank_histogram={8: 4, 64: 2},
        valid=10,
        servable={"vllm": 6, "peft": 9},
        adapters=(
            AdapterRank(name="contracts", rank=8),
            AdapterRank(name="dora", rank=8, refused_by={"vllm": "UnsupportedOption", "peft": "X"}),
            AdapterRank(name="head", rank=16, refused_by={"vllm": "ModulesToSave"}),
            AdapterRank(name="patents", rank=64),
        ),
        **fields,
    )


def test_a_vllm_model_counts_adapters_vllm_refuses_as_incompatible() -> None:
    lm = model(catalogs=[{"name": "legal"}], engine={"maxLoraRank": 16})
    status = status_of(lm, serving_rayservice(), [_mixed_catalog()])
    assert status["adapters"] == {
        "served": 4,
        "incompatible": 6,
        "incompatibleNames": ["dora", "head", "patents"],
    }


def test_a_vllm_model_derives_its_rank_from_adapters_vllm_can_serve() -> None:
    lm = model(catalogs=[{"name": "legal"}])
    status = status_of(lm, serving_rayservice(), [_mixed_catalog()])
    assert status["maxLoraRank"] == 64
    assert status["adapters"]["served"] == 6
    assert status["adapters"]["incompatible"] == 4


def test_a_peft_model_serves_what_peft_can_at_any_rank() -> None:
    lm = model(catalogs=[{"name": "legal"}], engine={"kind": "peft"})
    status = status_of(lm, serving_rayservice(), [_mixed_catalog()])
    assert status["adapters"] == {"served": 9, "incompatible": 1, "incompatibleNames": ["dora"]}


def test_a_peft_model_reading_an_old_catalog_status_serves_its_valid_adapters() -> None:
    lm = model(catalogs=[{"name": "legal"}], engine={"kind": "peft"})
    old = CatalogSnapshot(name="legal", namespace="demo", found=True, rank_histogram={8: 4, 64: 2})
    status = status_of(lm, serving_rayservice(), [old])
    assert status["adapters"] == {"served": 6, "incompatible": 0, "incompatibleNames": []}


# ---------------------------------------------------------------- invalid spec


def test_invalid_spec_status_says_so_and_keeps_what_was_known() -> None:
    good = status_of(rayservice=serving_rayservice())
    bad = invalid_spec_status(
        4, "spec.engine.maxLoras: must be >= 1", copy.deepcopy(good), now=T0 + timedelta(seconds=1)
    )
    assert bad["observedGeneration"] == 4
    ready = condition(bad, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    degraded = condition(bad, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "InvalidSpec")
    assert degraded["message"] == "spec.engine.maxLoras: must be >= 1"
    assert bad["endpoint"] == good["endpoint"]


def test_naive_timestamps_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone"):
        status_of(rayservice=None, now=datetime(2026, 1, 1))
