"""spec.router: the new policy names, the deprecated ones that still apply (rendered as what they
mean now, and reported to the user), and the knobs that only policy lorafleet reads."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from lorafleet_api.contract import DEPRECATED_ROUTER_POLICIES, ROUTER_POLICIES, RuntimeArgs
from lorafleet_operator.builders import render_rayservice, render_runtime_args
from lorafleet_operator.errors import InvalidSpecError
from lorafleet_operator.model import LoRAModel, OperatorConfig
from lorafleet_operator.reconcile.controllers import unposted_warnings
from lorafleet_operator.reconcile.loramodel import Outcome
from lorafleet_operator.reconcile.state import OperatorState
from lorafleet_operator.status import compute_loramodel_status, warnings_to_report

T0 = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)
ADAPTER_AFFINITY_MESSAGE = (
    'spec.router.policy "adapter-affinity" is deprecated: it now means "lorafleet"; '
    "write policy: lorafleet (adapter-affinity was the default: objects created without a "
    "policy store it too)"
)
RAY_DEFAULT_MESSAGE = (
    'spec.router.policy "ray-default" is deprecated: it now means "ray"; write policy: ray'
)


def loramodel_object(router: dict[str, Any] | None, generation: int = 3) -> dict[str, Any]:
    spec: dict[str, Any] = {"baseModel": {"source": "Qwen/Qwen2.5-7B-Instruct"}}
    if router is not None:
        spec["router"] = router
    return {
        "apiVersion": "lorafleet.dev/v1alpha1",
        "kind": "LoRAModel",
        "metadata": {"name": "qwen", "namespace": "demo", "uid": "u", "generation": generation},
        "spec": spec,
    }


def parse(router: dict[str, Any] | None, generation: int = 3) -> LoRAModel:
    return LoRAModel.from_object(loramodel_object(router, generation))


def status_of(lm: LoRAModel, previous: dict[str, Any] | None = None) -> dict[str, Any]:
    return compute_loramodel_status(lm, None, [], previous, now=T0, debounce_seconds=30)


# ---------------------------------------------------------------- rendering


def test_without_a_router_the_runtime_runs_policy_lorafleet() -> None:
    args = render_runtime_args(parse(None), [])
    assert args.router.policy == "lorafleet"
    assert args.to_serve_args()["router"] == {"policy": "lorafleet"}


@pytest.mark.parametrize(("old", "new"), sorted(DEPRECATED_ROUTER_POLICIES.items()))
def test_an_old_manifest_renders_the_same_rayservice_as_the_new_name(old: str, new: str) -> None:
    config = OperatorConfig()
    old_rs = render_rayservice(loramodel_object({"policy": old}), [], config)
    new_rs = render_rayservice(loramodel_object({"policy": new}), [], config)
    # Byte for byte, spec hash included: renaming the policy in a manifest redeploys nothing.
    assert old_rs == new_rs
    args = RuntimeArgs.from_serve_args(
        render_runtime_args(parse({"policy": old}), []).to_serve_args()
    )
    assert args.router.policy == new


def test_adapter_affinity_renders_like_a_manifest_without_a_router() -> None:
    config = OperatorConfig()
    assert render_rayservice(
        loramodel_object({"policy": "adapter-affinity"}), [], config
    ) == render_rayservice(loramodel_object(None), [], config)


def test_the_knobs_reach_the_runtime_with_policy_lorafleet() -> None:
    router = {"policy": "lorafleet", "maxReplicasPerAdapter": 2, "loadBoundFactor": 1.5}
    assert render_runtime_args(parse(router), []).to_serve_args()["router"] == {
        "policy": "lorafleet",
        "max_replicas_per_adapter": 2,
        "load_bound_factor": 1.5,
    }


@pytest.mark.parametrize("policy", ROUTER_POLICIES)
def test_each_new_policy_name_is_rendered_as_written(policy: str) -> None:
    assert render_runtime_args(parse({"policy": policy}), []).router.policy == policy
    assert parse({"policy": policy}).spec.warnings() == ()


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize("policy", ["affinity", "ray"])
@pytest.mark.parametrize(
    ("knob", "value"), [("maxReplicasPerAdapter", 2), ("loadBoundFactor", 1.5)]
)
def test_lorafleet_knobs_with_another_new_policy_are_refused(
    policy: str, knob: str, value: float
) -> None:
    with pytest.raises(InvalidSpecError) as raised:
        parse({"policy": policy, knob: value})
    # The CRD's CEL message, after the field path.
    assert raised.value.message == (
        f"spec.router: router.{knob} applies to policy lorafleet only (affinity and ray "
        "ignore it): remove it or set policy: lorafleet"
    )


def test_both_knobs_with_policy_ray_are_both_named() -> None:
    with pytest.raises(InvalidSpecError) as raised:
        parse({"policy": "ray", "maxReplicasPerAdapter": 2, "loadBoundFactor": 1.5})
    assert "router.maxReplicasPerAdapter applies" in raised.value.message
    assert "router.loadBoundFactor applies" in raised.value.message


@pytest.mark.parametrize("factor", [0.5, 10.5])
def test_load_bound_factor_outside_1_to_10_is_refused(factor: float) -> None:
    with pytest.raises(InvalidSpecError, match=r"spec\.router\.loadBoundFactor: Input should be"):
        parse({"loadBoundFactor": factor})


def test_unknown_policy_names_every_accepted_value() -> None:
    with pytest.raises(InvalidSpecError) as raised:
        parse({"policy": "random"})
    for name in (*ROUTER_POLICIES, *DEPRECATED_ROUTER_POLICIES):
        assert f"'{name}'" in raised.value.message


# ---------------------------------------------------------------- telling the user


def test_adapter_affinity_gets_a_deprecation_warning_with_what_to_write() -> None:
    (warning,) = parse({"policy": "adapter-affinity"}).spec.warnings()
    assert warning.reason == "DeprecatedRouterPolicy"
    assert warning.message == ADAPTER_AFFINITY_MESSAGE


def test_ray_default_gets_a_deprecation_warning_with_what_to_write() -> None:
    (warning,) = parse({"policy": "ray-default"}).spec.warnings()
    assert warning.reason == "DeprecatedRouterPolicy"
    assert warning.message == RAY_DEFAULT_MESSAGE


def test_ray_default_with_knobs_still_applies_and_is_told_to_drop_them() -> None:
    # Accepted before the rename (the knobs were ignored), so accepted now: an existing
    # manifest keeps applying; the warning says the whole edit `policy: ray` needs.
    lm = parse({"policy": "ray-default", "maxReplicasPerAdapter": 2, "loadBoundFactor": 1.5})
    assert render_runtime_args(lm, []).router.policy == "ray"
    (warning,) = lm.spec.warnings()
    assert warning.message == (
        'spec.router.policy "ray-default" is deprecated: it now means "ray"; write policy: ray '
        "and remove maxReplicasPerAdapter and loadBoundFactor (policy ray ignores them)"
    )


def test_status_lists_the_warnings_and_only_when_there_are_some() -> None:
    assert status_of(parse({"policy": "adapter-affinity"}))["warnings"] == [
        ADAPTER_AFFINITY_MESSAGE
    ]
    assert "warnings" not in status_of(parse({"policy": "lorafleet"}))
    assert "warnings" not in status_of(parse(None))


def test_an_unobserved_generation_reports_its_warnings() -> None:
    lm = parse({"policy": "adapter-affinity"}, generation=4)
    previous = status_of(parse({"policy": "adapter-affinity"}, generation=3))
    assert [w.message for w in warnings_to_report(lm, previous)] == [ADAPTER_AFFINITY_MESSAGE]
    assert [w.message for w in warnings_to_report(lm, None)] == [ADAPTER_AFFINITY_MESSAGE]


def test_reconciling_the_same_generation_again_reports_nothing() -> None:
    # Drift checks, RayService events and restarts must not repeat the Event.
    lm = parse({"policy": "adapter-affinity"})
    assert warnings_to_report(lm, status_of(lm)) == ()


def test_an_operator_upgrade_reports_a_warning_the_status_does_not_hold_yet() -> None:
    # The old operator observed this generation and wrote no warnings.
    lm = parse({"policy": "adapter-affinity"})
    previous = status_of(lm)
    del previous["warnings"]
    assert [w.reason for w in warnings_to_report(lm, previous)] == ["DeprecatedRouterPolicy"]


def test_switching_to_the_new_name_clears_the_warning() -> None:
    previous = status_of(parse({"policy": "adapter-affinity"}, generation=3))
    lm = parse({"policy": "lorafleet"}, generation=4)
    assert warnings_to_report(lm, previous) == ()
    assert "warnings" not in status_of(lm, previous)


def test_a_reconcile_of_a_body_read_before_the_status_write_posts_nothing_twice() -> None:
    # A RayService event right after the create reads the LoRAModel before the create's
    # reconcile wrote status; it waits for the lock and sees "not observed" again.
    state = OperatorState(config=OperatorConfig())
    key = ("demo", "qwen")
    lm = parse({"policy": "adapter-affinity"}, generation=3)
    stale = Outcome(
        rayservice="demo/qwen",
        applied=False,
        status_patched=True,
        status=status_of(lm),
        warnings=warnings_to_report(lm, None),
    )
    assert [w.message for w in unposted_warnings(state, key, stale)] == [ADAPTER_AFFINITY_MESSAGE]
    assert unposted_warnings(state, key, stale) == []
    # An edit (a new generation) is told again.
    edited = parse({"policy": "adapter-affinity", "maxReplicasPerAdapter": 2}, generation=4)
    outcome = Outcome(
        rayservice="demo/qwen",
        applied=False,
        status_patched=True,
        status=status_of(edited),
        warnings=warnings_to_report(edited, stale.status),
    )
    assert len(unposted_warnings(state, key, outcome)) == 1
    state.forget_model(key)
    assert key not in state.posted_warnings


def test_a_deleted_loramodel_is_forgotten_with_its_pending_recheck() -> None:
    """kopf calls no delete handler without a finalizer; the DELETED event lands here."""
    import asyncio

    from lorafleet_operator.reconcile.controllers import model_deleted

    async def scenario() -> tuple[bool, bool, bool]:
        state = OperatorState(config=OperatorConfig())
        key = ("demo", "qwen")
        state.posted_warnings[key] = (3, frozenset({"told"}))
        recheck = asyncio.create_task(asyncio.sleep(60))
        state.rechecks[key] = recheck
        body = {"metadata": {"namespace": "demo", "name": "qwen"}}
        await model_deleted(state, body)
        await asyncio.sleep(0)
        return key in state.posted_warnings, key in state.rechecks, recheck.cancelled()

    still_posted, still_scheduled, cancelled = asyncio.run(scenario())
    assert not still_posted and not still_scheduled and cancelled
