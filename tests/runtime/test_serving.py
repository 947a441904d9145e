"""lorafleet's Serve application on real Ray Serve + vLLM (CPU), driven through the official
``openai`` client and plain HTTP: what a client of a LoRAModel sees."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import secrets
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import openai

from lorafleet_runtime.adapters.index import STORAGE_REFRESH_SECONDS
from lorafleet_testbed.adapter_trees import tree_files, upload_s3

from .conftest import (
    BUCKET,
    FAILURE_MEMORY_S,
    LOCKED_SECRET,
    MAX_LORAS,
    MODEL_ID,
    NAMESPACE,
    SERVABLE,
    Deployment,
    eventually,
)

PROMPT = [{"role": "user", "content": "The quick brown fox"}]
PROMPT_TEXT = "The quick brown fox"


def _client(deployment: Deployment) -> openai.OpenAI:
    # Imported here, not at module level: openai comes with the runtime extra, and
    # `make test-unit` (`pytest -m unit`) must collect in a venv without it.
    import openai

    return openai.OpenAI(base_url=deployment.base_url, api_key="unused", max_retries=0)


def _chat(deployment: Deployment, model: str, max_tokens: int = 12) -> str:
    """Greedy text completion (the random tiny model's chat answers are often empty; plain
    completions of an ASCII prompt give text that shows which weights answered)."""
    reply = _client(deployment).completions.create(
        model=model,
        prompt=PROMPT_TEXT,
        max_tokens=max_tokens,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    return reply.choices[0].text


def _tokens(deployment: Deployment, model: str, max_tokens: int = 12) -> tuple[int, ...]:
    """The greedy completion's token ids: which weights answered, even when the random tiny
    model's tokens are not printable text."""
    reply = _client(deployment).completions.create(
        model=model,
        prompt=PROMPT_TEXT,
        max_tokens=max_tokens,
        temperature=0,
        extra_body={"ignore_eos": True, "return_token_ids": True},
    )
    token_ids = (reply.choices[0].model_extra or {}).get("token_ids")
    assert token_ids, reply
    return tuple(token_ids)


def _exchange(deployment: Deployment, model: str) -> tuple[int, Any, bytes]:
    """A short completion for ``model``: status, headers and body as received."""
    body = json.dumps({"model": model, "prompt": "The quick", "max_tokens": 4}).encode()
    request = urllib.request.Request(
        deployment.base_url + "/completions",
        data=body,
        headers={"content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def _post(deployment: Deployment, model: str) -> tuple[int, dict[str, Any]]:
    status, _, payload = _exchange(deployment, model)
    return status, json.loads(payload)


def test_models_lists_base_and_every_servable_adapter(deployment: Deployment) -> None:
    listed = {m.id: m for m in _client(deployment).models.list().data}
    adapters = {f"{MODEL_ID}:{name}" for name in SERVABLE}
    assert adapters <= set(listed)
    assert MODEL_ID in listed
    # Invalid, incompatible ones are not offered.
    assert f"{MODEL_ID}:broken" not in listed
    assert f"{MODEL_ID}:wide" not in listed
    card = listed[f"{MODEL_ID}:a0"].model_dump()
    assert card["parent"] == MODEL_ID
    assert card["rank"] == 8
    assert card["revision"]


def test_base_and_adapters_from_s3_gcs_and_local_answer_differently(
    deployment: Deployment,
) -> None:
    outputs = {
        model: _tokens(deployment, model)
        for model in [MODEL_ID, f"{MODEL_ID}:a0", f"{MODEL_ID}:g0", f"{MODEL_ID}:l0"]
    }
    assert all(outputs.values()), outputs
    assert len(set(outputs.values())) == len(outputs), outputs


def test_streaming_yields_the_same_text_in_several_chunks(deployment: Deployment) -> None:
    model = f"{MODEL_ID}:a1"
    whole = _chat(deployment, model, max_tokens=16)
    stream = _client(deployment).completions.create(
        model=model,
        prompt=PROMPT_TEXT,
        max_tokens=16,
        temperature=0,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    pieces = [chunk.choices[0].text for chunk in stream if chunk.choices]
    assert len([p for p in pieces if p]) > 1
    assert "".join(pieces) == whole


def test_chat_completions_work_for_base_and_adapter_streamed_or_not(
    deployment: Deployment,
) -> None:
    client = _client(deployment)
    for model in (MODEL_ID, f"{MODEL_ID}:g1"):
        reply = client.chat.completions.create(
            model=model,
            messages=PROMPT,
            max_tokens=8,
            temperature=0,  # type: ignore[arg-type]
        )
        assert reply.model == model
        assert reply.choices[0].message.role == "assistant"
        stream = client.chat.completions.create(
            model=model,
            messages=PROMPT,  # type: ignore[arg-type]
            max_tokens=8,
            temperature=0,
            stream=True,
        )
        chunks = list(stream)
        assert chunks
        assert chunks[-1].choices[0].finish_reason in {"length", "stop"}


def test_more_adapters_than_max_loras_rotate_and_vllm_unloads_evicted_ones(
    deployment: Deployment,
) -> None:
    order = ["a0", "g1", "l1", "a2", "a0"]
    first: dict[str, tuple[int, ...]] = {}
    for name in order:
        text = _tokens(deployment, f"{MODEL_ID}:{name}")
        first.setdefault(name, text)
        assert text == first[name], f"{name} answered differently after being reloaded"
        residency = deployment.server_call("residency")
        assert len(residency["engine"]) <= MAX_LORAS, residency
        assert len(residency["multiplexed"]) <= MAX_LORAS, residency
        assert name in residency["engine"]
        # The batch that just used it put it into a GPU slot (vLLM's workers say so).
        assert name in residency["gpu"], residency
        assert sorted(residency["gpu"] + residency["cpu"]) == sorted(residency["engine"])
    residency = deployment.server_call("residency")
    engine = set(residency["engine"])
    # Which ones stay is the eviction policy's choice (lorafleet's: the least requested
    # goes); the one just used stays, and the rest rotated out.
    assert len(engine) == MAX_LORAS and "a0" in engine, residency
    evicted = set(order) - engine
    assert len(evicted) == len(set(order)) - MAX_LORAS
    assert not evicted & set(residency["gpu"]), residency  # they left their slots too
    # Evicted from the engine, still on local disk for a quick reload.
    assert evicted <= set(residency["disk"])
    # The same view reaches request routers through Serve's routing stats.
    stats = deployment.server_call("record_routing_stats")
    assert set(stats["lorafleet"]["engine"]) == engine


def test_eviction_keeps_the_adapter_requested_most_where_lru_would_drop_it(
    deployment: Deployment,
) -> None:
    # The LoRAModel's default policy (lorafleet) evicts the least requested adapter.
    for _ in range(20):
        _tokens(deployment, f"{MODEL_ID}:a1", max_tokens=1)
    _tokens(deployment, f"{MODEL_ID}:g0", max_tokens=1)
    _tokens(deployment, f"{MODEL_ID}:l0", max_tokens=1)
    engine = set(deployment.server_call("residency")["engine"])
    # LRU would hold g0 and l0 now; a1, the least recent, would be gone.
    assert engine == {"a1", "l0"}, engine


def test_unknown_adapter_is_404_at_the_ingress(deployment: Deployment) -> None:
    before = deployment.server_call("residency")
    status, body = _post(deployment, f"{MODEL_ID}:no-such-adapter")
    assert status == 404
    assert "none of the catalogs" in body["error"]["message"]
    assert body["error"]["type"] == "NotFoundError"
    status, _ = _post(deployment, f"{MODEL_ID}:../../etc")
    assert status == 404
    status, _ = _post(deployment, "some-other-model")
    assert status == 404
    assert deployment.server_call("residency")["multiplexed"] == before["multiplexed"]


def test_invented_names_leave_ingress_state_bounded(deployment: Deployment) -> None:
    for i in range(300):
        assert _post(deployment, f"{MODEL_ID}:invented-{i}")[0] == 404
    state = deployment.ingress_call("lorafleet_state")
    # Only names that passed the index check get a handle; invented ones never do.
    assert state["handles"] <= len(SERVABLE) + 1
    assert state["labels"] <= state["max_labels"]


def test_known_but_invalid_or_incompatible_adapters_are_422_with_the_reason(
    deployment: Deployment,
) -> None:
    status, body = _post(deployment, f"{MODEL_ID}:wide")
    assert status == 422
    assert body["error"]["type"] == "RankTooHigh"
    assert "rank 16" in body["error"]["message"]
    assert "max_lora_rank 8" in body["error"]["message"]
    status, body = _post(deployment, f"{MODEL_ID}:broken")
    assert status == 422
    assert "invalid" in body["error"]["message"]


def test_storage_failure_is_503_with_the_cause_and_remembered(deployment: Deployment) -> None:
    status, body = _post(deployment, f"{MODEL_ID}:doomed")
    assert status == 503, body
    assert body["error"]["type"] == "NotFound"
    assert "gone" in body["error"]["message"]
    state = deployment.ingress_call("lorafleet_state")
    assert state["failures"] >= 1
    # Remembered: answered by the ingress without another fetch, still 503 (never 404).
    started = time.monotonic()
    status, _ = _post(deployment, f"{MODEL_ID}:doomed")
    assert status == 503
    assert time.monotonic() - started < 1.0
    # Fixed in storage: servable once the memory expires.
    catalogs = deployment.catalogs
    catalogs.upload_s3("doomed", catalogs.root / "built" / f"doomed-{catalogs.seeds['doomed']}")
    time.sleep(FAILURE_MEMORY_S + 1)
    assert _post(deployment, f"{MODEL_ID}:doomed")[0] == 200


def test_a_catalog_secret_that_is_gone_is_503_access_denied_until_it_is_back(
    deployment: Deployment,
) -> None:
    # Every s3-loras adapter served above came through that catalog's credentialsSecretRef
    # (the replicas have no AWS_* variables); locked-loras names a Secret deleted after sync.
    status, body = _post(deployment, f"{MODEL_ID}:locked")
    assert status == 503, body
    assert body["error"]["type"] == "AccessDenied"
    assert f"Secret default/{LOCKED_SECRET} does not exist" in body["error"]["message"]
    # Put back, it is read again (as a rotated key would be) without restarting anything.
    catalogs = deployment.catalogs
    catalogs.create_secret(LOCKED_SECRET)
    eventually(
        lambda: _post(deployment, f"{MODEL_ID}:locked")[0] == 200,
        STORAGE_REFRESH_SECONDS + FAILURE_MEMORY_S + 15,
        "the adapter to be servable with its Secret back",
    )
    # The replica now holds the Secret's keys: that download had no others. With wrong keys
    # in the Secret it reads and sends those (the storage refuses them) for an uncached
    # adapter: neither the keys it held nor the wrong ones are anywhere in the answer.
    right = {
        "AWS_ACCESS_KEY_ID": catalogs.minio.access_key,
        "AWS_SECRET_ACCESS_KEY": catalogs.minio.secret_key,
    }
    wrong = {
        "AWS_ACCESS_KEY_ID": "wrong-" + secrets.token_hex(6),
        "AWS_SECRET_ACCESS_KEY": secrets.token_urlsafe(24),
    }
    folder = catalogs.build_adapter("locked-late", 900)
    upload_s3(catalogs.s3(), BUCKET, "locked-loras/locked-late/", tree_files(folder))
    catalogs.publish("locked-loras")
    _put_secret(deployment, LOCKED_SECRET, wrong)
    try:
        time.sleep(STORAGE_REFRESH_SECONDS + 3)
        status, raw = _post_raw(deployment, f"{MODEL_ID}:locked-late")
        assert status == 503, raw
        assert '"AccessDenied"' in raw and "access denied" in raw, raw
        for value in [*right.values(), *wrong.values()]:
            for form in (value, base64.b64encode(value.encode()).decode()):
                assert form not in raw, raw
    finally:
        _put_secret(deployment, LOCKED_SECRET, right)
    eventually(
        lambda: _post(deployment, f"{MODEL_ID}:locked-late")[0] == 200,
        STORAGE_REFRESH_SECONDS + FAILURE_MEMORY_S + 15,
        "the adapter to be servable with the right keys back",
    )


def _put_secret(deployment: Deployment, name: str, data: dict[str, str]) -> None:
    manifest = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "stringData": data,
    }
    deployment.catalogs.plane.kubectl("apply", "-f", "-", input_text=json.dumps(manifest))


def _post_raw(deployment: Deployment, model: str) -> tuple[int, str]:
    """Everything a client receives: status line, headers and body, as text."""
    status, headers, payload = _exchange(deployment, model)
    return status, f"HTTP {status}\n{headers}\n{payload.decode(errors='replace')}"


def test_new_adapter_in_storage_becomes_servable_without_restart(deployment: Deployment) -> None:
    catalogs = deployment.catalogs
    catalogs.upload_s3("fresh", catalogs.build_adapter("fresh", 900))
    catalogs.publish("s3-loras")
    model = f"{MODEL_ID}:fresh"
    eventually(
        lambda: model in {m.id for m in _client(deployment).models.list().data},
        30,
        "the new adapter in /v1/models",
    )
    assert _tokens(deployment, model)


def test_reuploaded_adapter_serves_its_new_weights(deployment: Deployment) -> None:
    catalogs = deployment.catalogs
    model = f"{MODEL_ID}:a3"
    old = _tokens(deployment, model)
    # The same new weights under another name give the output to expect.
    new_folder = catalogs.build_adapter("a3-next", 777)
    catalogs.upload_s3("a3-next", new_folder)
    catalogs.upload_s3("a3", new_folder)
    catalogs.publish("s3-loras")
    expected = eventually(
        lambda: (
            _post(deployment, f"{MODEL_ID}:a3-next")[0] == 200
            and _tokens(deployment, f"{MODEL_ID}:a3-next")
        ),
        30,
        "a3-next to be servable",
    )
    assert expected != old
    eventually(lambda: _tokens(deployment, model) == expected, 30, "a3 to serve its new weights")


def test_50_concurrent_requests_over_8_adapters_all_succeed(deployment: Deployment) -> None:
    models = [f"{MODEL_ID}:{SERVABLE[i % len(SERVABLE)]}" for i in range(50)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(lambda m: _post(deployment, m), models))
    assert [status for status, _ in results] == [200] * 50, [b for s, b in results if s != 200]


def test_metrics_count_requests_and_loads_per_adapter(deployment: Deployment) -> None:
    # This test's own traffic: a0 served (loaded) and an invented name refused.
    assert _post(deployment, f"{MODEL_ID}:a0")[0] == 200
    assert _post(deployment, f"{MODEL_ID}:invented-metrics")[0] == 404

    def scrape() -> str:
        with urllib.request.urlopen(deployment.metrics_url, timeout=10) as response:
            text: str = response.read().decode()
        ok = "lorafleet_requests" in text and "lorafleet_adapter_loads" in text
        return text if ok and 'adapter="a0"' in text else ""

    text = eventually(scrape, 60, "lorafleet metrics on Ray's metrics endpoint")
    assert "lorafleet_adapter_download_bytes" in text
    assert "lorafleet_adapter_evictions" in text
    assert "invented-" not in text
