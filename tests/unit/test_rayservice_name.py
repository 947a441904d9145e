"""RayService names: KubeRay rejects names over 47 characters after accepting the object, so
the operator must shorten long LoRAModel names itself, the same way every time."""

from __future__ import annotations

import re

import pytest

from lorafleet_operator.builders import endpoint_url, rayservice_name
from lorafleet_operator.errors import InvalidSpecError

DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


@pytest.mark.parametrize("name", ["q", "qwen", "a" * 47, "support-eu-qwen-2-5-7b"])
def test_names_that_fit_are_kept_as_they_are(name: str) -> None:
    assert rayservice_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "a" * 48,
        "b" * 63,
        "customer-support-summarisation-qwen2-5-7b-instruct-eu",
        # The cut falls right after a '-': the result must not contain '--' at the join.
        "abcdefghijklmnopqrstuvwxyz-abcdefghij-klmnopqrstuvwxyz",
    ],
)
def test_long_names_are_shortened_to_a_valid_rayservice_name(name: str) -> None:
    short = rayservice_name(name)
    assert len(short) <= 47
    assert DNS1035.match(short), short
    assert "--" not in short
    # Still recognisable: it starts with the LoRAModel's name.
    assert name.startswith(short[: len(short) - 9].rstrip("-"))
    assert rayservice_name(name) == short


def test_long_names_sharing_a_prefix_get_different_rayservices() -> None:
    base = "team-a-customer-support-summarisation-qwen-7b-"
    names = [base + suffix for suffix in ("eu", "us", "apac", "eu-2")]
    assert len({rayservice_name(name) for name in names}) == len(names)


def test_shortening_is_the_same_in_every_process() -> None:
    # A fixed expectation: a change in the algorithm would orphan existing RayServices.
    assert (
        rayservice_name("customer-support-summarisation-qwen2-5-7b-instruct-eu")
        == "customer-support-summarisation-qwen2-5-13688dc4"
    )


@pytest.mark.parametrize("name", ["", "Qwen", "9qwen", "qwen.eu", "qwen-", "q" * 64])
def test_names_that_are_not_dns1035_labels_are_refused(name: str) -> None:
    with pytest.raises(InvalidSpecError):
        rayservice_name(name)


def test_endpoint_url_is_the_serve_service_of_the_loramodel() -> None:
    assert endpoint_url("qwen", "demo") == "http://qwen.demo.svc:8000/v1"
