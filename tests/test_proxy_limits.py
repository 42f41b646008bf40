"""What a request cannot do to the proxy: get around its caps, make it load a model, or break
its JSON with a number JSON cannot hold. Each refusal is a 400 naming the field, sent before
anything is drawn; each has a control the proxy serves."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from ttscale.proxy import BackgroundProxy, ProxyConfig
from ttscale.scaling import RequestLimits
from ttscale.testing.server import LoopbackServer, ScriptRequest

QUESTION = "What is 6 * 7?"
CAPS = RequestLimits(max_samples=16, max_tokens=64)


def answer(request: ScriptRequest) -> str:
    if request.prompt.startswith("Rate how good"):
        return "I would rather not say."  # a judge that gives no rating: its score is NaN
    return "\\boxed{42}"


@pytest.fixture
def upstream() -> Iterator[LoopbackServer]:
    with LoopbackServer(answers=answer) as server:
        yield server


@pytest.fixture
def proxy(upstream: LoopbackServer) -> Iterator[BackgroundProxy]:
    config = ProxyConfig(base_url=upstream.base_url, model="loopback", limits=CAPS)
    running = BackgroundProxy(config).start()
    yield running
    running.stop()


def post(proxy: BackgroundProxy, body: dict[str, Any] | bytes, path: str = "/chat/completions"):  # type: ignore[no-untyped-def]
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    return httpx2.post(proxy.base_url + path, content=content, headers=headers, timeout=60)


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "loopback", "messages": [{"role": "user", "content": QUESTION}], **fields}


def refused(response: httpx2.Response, param: str, words: str) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and words in error["message"], error


def strict_json(data: bytes) -> Any:
    """JSON as every client's parser reads it: no NaN, no Infinity."""

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} in the answer")

    return json.loads(data, parse_constant=refuse)


SCALED = {"strategy": "majority", "samples": 4}


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b'{"model": "loopback", "messages": [], "top_k": NaN}', "top_k"),
        (b'{"model": "loopback", "messages": [], "min_p": -Infinity}', "min_p"),
        (b'{"model": "loopback", "messages": [], "x": {"y": [1, 1e999]}}', "x.y[1]"),
        (
            b'{"model": "loopback", "messages": [], "ttscale": {"sampling": {"top_p": NaN}}}',
            "ttscale.sampling.top_p",
        ),
    ],
)
def test_a_number_json_cannot_hold_is_a_400_naming_where(
    proxy: BackgroundProxy, upstream: LoopbackServer, raw: bytes, param: str
) -> None:
    refused(post(proxy, raw), param, "not a finite number")
    assert upstream.request_count == 0
    # Control: the same body with a number is served.
    fine = raw.replace(b"-Infinity", b"0.1").replace(b"NaN", b"0.5").replace(b"1e999", b"2")
    ok = post(
        proxy, fine.replace(b'"messages": []', b'"messages": [{"role": "user", "content": "hi"}]')
    )
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize(
    "field", ["n_predict", "best_of", "max_new_tokens", "num_return_sequences"]
)
@pytest.mark.parametrize("scaled", [True, False], ids=["scaled", "pass-through"])
def test_fields_that_set_lengths_around_the_caps_are_refused(
    proxy: BackgroundProxy, upstream: LoopbackServer, field: str, scaled: bool
) -> None:
    extra = {"ttscale": SCALED} if scaled else {}
    refused(post(proxy, chat(**{field: 100_000}, **extra)), field, "around this server's caps")
    assert upstream.request_count == 0
    # Control: the capped fields are served.
    assert post(proxy, chat(max_tokens=64, n=2, **extra)).status_code == 200


def test_completions_take_no_chat_only_token_field(proxy: BackgroundProxy) -> None:
    body = {"model": "loopback", "prompt": QUESTION, "max_completion_tokens": 100_000}
    refused(post(proxy, body, "/completions"), "max_completion_tokens", "use n and max_tokens")
    body = {"model": "loopback", "prompt": QUESTION, "max_tokens": 8}
    assert post(proxy, body, "/completions").status_code == 200


def test_a_pass_through_meets_the_caps_a_scaled_request_does(
    proxy: BackgroundProxy, upstream: LoopbackServer
) -> None:
    refused(post(proxy, chat(n=17)), "n", "over this server's cap of 16")
    refused(post(proxy, chat(max_tokens=65)), "max_tokens", "over this server's cap of 64")
    refused(post(proxy, chat(max_completion_tokens=10**6)), "max_completion_tokens", "cap of 64")
    assert upstream.request_count == 0
    # Within the caps the body goes as the client sent it...
    assert post(proxy, chat(n=16, max_tokens=64, top_k=5)).status_code == 200
    assert upstream.records[-1].body == chat(n=16, max_tokens=64, top_k=5)
    # ...and a body that sets no token limit gets the cap, since the upstream's may be none.
    assert post(proxy, chat(top_k=5)).status_code == 200
    relayed = upstream.records[-1].body
    assert relayed is not None and relayed["max_tokens"] == 64 and relayed["top_k"] == 5


def test_a_request_may_not_load_a_reward_model_into_the_proxy(
    proxy: BackgroundProxy, upstream: LoopbackServer
) -> None:
    local = {"strategy": "best_of_n", "verifier": {"name": "reward_model", "model": "/etc"}}
    refused(post(proxy, chat(ttscale=local)), "ttscale.verifier.model", "may not load a reward")
    assert upstream.request_count == 0
    # Control: a served reward model is a server the request names, refused as one.
    served = {"name": "reward_model", "base_url": upstream.base_url, "model": "rm"}
    response = post(proxy, chat(ttscale={**local, "verifier": served}))
    refused(response, "ttscale.verifier.base_url", "may not name a server")


@pytest.mark.parametrize("stream", [False, True])
def test_a_score_json_cannot_hold_is_written_null(proxy: BackgroundProxy, stream: bool) -> None:
    settings = {"strategy": "best_of_n", "samples": 2, "verifier": "judge"}
    response = post(proxy, chat(ttscale=settings, stream=stream))
    assert response.status_code == 200, response.text
    if stream:
        events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        answers = [strict_json(event.encode()) for event in events[:-1]]
        info = next(a["ttscale"] for a in answers if "ttscale" in a)
    else:
        info = strict_json(response.content)["ttscale"]
    assert [score["value"] for score in info["scores"]] == [None, None]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("fields", "picked"),
    [({"n": 3}, 1), ({"n": 2, "max_tokens": 1}, 0)],
    ids=["one-distinct-answer", "no-answer-read"],
)
def test_a_client_asking_n_gets_n_choices(
    proxy: BackgroundProxy, stream: bool, fields: dict[str, Any], picked: int
) -> None:
    settings = {"strategy": "majority", "samples": 4}
    response = post(proxy, chat(ttscale=settings, stream=stream, **fields))
    assert response.status_code == 200, response.text
    if stream:
        events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
        chunks = [json.loads(event) for event in events[:-1]]
        indices = {c["index"] for chunk in chunks for c in chunk["choices"]}
        info = next(chunk["ttscale"] for chunk in chunks if "ttscale" in chunk)
    else:
        body = response.json()
        indices = {choice["index"] for choice in body["choices"]}
        assert all(isinstance(c["message"]["content"], str) for c in body["choices"])
        info = body["ttscale"]
    assert indices == set(range(fields["n"]))
    # The choices the strategy did not make are said to be other samples.
    assert any(f"the strategy chose {picked} of the {fields['n']}" in w for w in info["warnings"])


@pytest.mark.parametrize("verifier", ["math", "exact_match"])
def test_a_verifier_needing_a_reference_answer_is_refused_before_drawing(
    proxy: BackgroundProxy, upstream: LoopbackServer, verifier: str
) -> None:
    settings = {"strategy": "best_of_n", "samples": 4, "verifier": verifier}
    refused(post(proxy, chat(ttscale=settings)), "ttscale.verifier", "a request carries none")
    assert upstream.request_count == 0
    # Control: a verifier that needs no reference answer is served.
    settings["verifier"] = "confidence"
    assert post(proxy, chat(ttscale=settings, logprobs=True, top_logprobs=5)).status_code == 200


def test_a_body_that_trickles_in_is_a_408_and_frees_its_slot(upstream: LoopbackServer) -> None:
    config = ProxyConfig(
        base_url=upstream.base_url, model="loopback", max_concurrent_requests=2, body_timeout_s=1.0
    )
    running = BackgroundProxy(config).start()
    try:
        body = json.dumps(chat()).encode()
        head = (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        idle = [socket.create_connection((running.host, running.port)) for _ in range(2)]
        for connection in idle:
            connection.sendall(head + body[:10])  # and then nothing more
        time.sleep(0.3)
        assert post(running, chat()).status_code == 429  # both slots held: the control
        answers = []
        for connection in idle:
            connection.settimeout(10)
            answers.append(connection.recv(65536).decode(errors="replace"))
            connection.close()
        assert all(answer.startswith("HTTP/1.1 408") for answer in answers), answers
        assert all("did not arrive within 1 s" in answer for answer in answers)
        assert post(running, chat()).status_code == 200  # the slots are free again
    finally:
        running.stop()


def test_a_member_that_will_refuse_is_refused_before_drawing(
    proxy: BackgroundProxy, upstream: LoopbackServer
) -> None:
    weighted = {"name": "weighted", "verifiers": ["unit_tests"]}
    settings = {"strategy": "best_of_n", "samples": 4, "verifier": weighted}
    response = post(proxy, chat(ttscale=settings))
    assert response.status_code == 403, response.text
    assert upstream.request_count == 0
    # Control: a member that needs no permission is served.
    settings["verifier"] = {"name": "weighted", "verifiers": ["confidence"]}
    assert post(proxy, chat(ttscale=settings, logprobs=True, top_logprobs=5)).status_code == 200


def test_a_confidence_verifier_has_its_samples_drawn_with_logprobs(
    proxy: BackgroundProxy, upstream: LoopbackServer
) -> None:
    settings = {"strategy": "best_of_n", "samples": 3, "verifier": "confidence"}
    response = post(proxy, chat(ttscale=settings))  # the client asks for no logprobs
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["choices"][0]["logprobs"] is None  # and gets none back
    assert all(isinstance(score["value"], float) for score in body["ttscale"]["scores"])
    sent = [record.body for record in upstream.records if record.body]
    assert sent and all(b["logprobs"] is True and b["top_logprobs"] == 20 for b in sent)


def test_a_composed_verifiers_members_are_checked_as_a_verifier_is(
    upstream: LoopbackServer,
) -> None:
    config = ProxyConfig(
        base_url=upstream.base_url, model="loopback", limits=CAPS, allow_code_execution=True
    )
    running = BackgroundProxy(config).start()
    try:
        member = {"name": "reward_model", "model": "/etc"}
        loads = {"strategy": "best_of_n", "verifier": {"name": "weighted", "verifiers": [member]}}
        response = post(running, chat(ttscale=loads))
        refused(response, "ttscale.verifier.verifiers[0].model", "may not load a reward")
        grants = {"name": "unit_tests", "allow_code_execution": True}
        gate = {"name": "gate", "gate": grants, "scorer": "judge"}
        response = post(running, chat(ttscale={"strategy": "best_of_n", "verifier": gate}))
        refused(response, "ttscale.verifier.gate.allow_code_execution", "the server's to set")
        # The server allows code to run, but a request carries no tests to run: refused first.
        gate = {"name": "gate", "gate": "unit_tests", "scorer": "judge"}
        response = post(running, chat(ttscale={"strategy": "best_of_n", "verifier": gate}))
        refused(response, "ttscale.verifier", "a request carries none")
        assert upstream.request_count == 0
        # Control: members that need nothing from a dataset answer.
        judged = {"name": "weighted", "verifiers": [{"name": "judge", "scale": 10}, "judge"]}
        settings = {"strategy": "best_of_n", "samples": 2, "verifier": judged}
        response = post(running, chat(ttscale=settings))
        assert response.status_code == 200, response.text
    finally:
        running.stop()


def test_a_body_nested_too_deep_or_a_composition_too_wide_is_a_400(
    proxy: BackgroundProxy, upstream: LoopbackServer
) -> None:
    def gates(depth: int) -> Any:
        nested: Any = "confidence"
        for _ in range(depth):
            nested = {"name": "gate", "gate": "confidence", "scorer": nested}
        return nested

    deep = {"strategy": "best_of_n", "samples": 2, "verifier": gates(70)}
    response = post(proxy, chat(ttscale=deep))
    assert response.status_code == 400, response.text
    assert "nested more than 64 levels" in response.json()["error"]["message"]
    wide = {"name": "weighted", "verifiers": ["confidence"] * 65}
    response = post(proxy, chat(ttscale={"strategy": "best_of_n", "samples": 2, "verifier": wide}))
    refused(response, "ttscale.verifier", "at most 64 members, got 65")
    assert upstream.request_count == 0
    # Controls: a composition 30 deep, and one 64 wide, are answered.
    for verifier in (gates(30), {"name": "weighted", "verifiers": ["confidence"] * 64}):
        settings = {"strategy": "best_of_n", "samples": 2, "verifier": verifier}
        assert post(proxy, chat(ttscale=settings)).status_code == 200


def test_a_confidence_verifier_asked_with_no_alternatives_is_refused_before_drawing(
    proxy: BackgroundProxy, upstream: LoopbackServer
) -> None:
    settings = {"strategy": "best_of_n", "samples": 2, "verifier": "confidence"}
    asked = chat(ttscale=settings, logprobs=True, top_logprobs=0)
    refused(post(proxy, asked), "top_logprobs", "asks for none")
    assert upstream.request_count == 0
    # Controls: one alternative, or no logprobs asked (the verifier's own are drawn), answer.
    for fields in ({"logprobs": True, "top_logprobs": 1}, {}):
        assert post(proxy, chat(ttscale=settings, **fields)).status_code == 200
    mean = {**settings, "verifier": {"name": "confidence", "measure": "mean_logprob"}}
    assert post(proxy, chat(ttscale=mean, logprobs=True, top_logprobs=0)).status_code == 200
