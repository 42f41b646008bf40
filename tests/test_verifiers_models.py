"""Reward models (local transformers and served /classify), the LLM judge and process rewards."""

from __future__ import annotations

import asyncio
import json
import math
import threading
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from ttscale import OpenAISampler
from ttscale.errors import ConfigError, VerifierError
from ttscale.protocols import as_verifier
from ttscale.registry import create
from ttscale.testing.server import LoopbackServer, ScriptRequest
from ttscale.types import Candidate, Problem, Score, TokenLogprob
from ttscale.verifiers.judge import LLMJudge, parse_rating, parse_yes_no, yes_probability
from ttscale.verifiers.process_reward import (
    PrefixStepScorer,
    ProcessRewardVerifier,
    aggregate_steps,
    split_steps,
)
from ttscale.verifiers.reward_model import (
    LocalRewardModel,
    ServedRewardModel,
    reward_from_outputs,
    rewards_from_reply,
)

PROBLEM = Problem(id="p1", prompt="What is two plus two?", answer="4")


def candidates(*texts: str) -> list[Candidate]:
    return [Candidate(text=text, index=i) for i, text in enumerate(texts)]


def score(verifier: Any, texts: Sequence[str], problem: Problem = PROBLEM) -> list[Score]:
    return list(asyncio.run(verifier.score(problem, candidates(*texts))))


# -- pure pieces ----------------------------------------------------------------------------------


def test_reward_from_outputs() -> None:
    assert reward_from_outputs([1.7], -1, are_logits=True) == 1.7
    assert reward_from_outputs([0.2, 0.8], -1, are_logits=False) == 0.8
    assert math.isclose(reward_from_outputs([0.0, 0.0], 1, are_logits=True), 0.5)
    with pytest.raises(VerifierError):
        reward_from_outputs([0.1, 0.9], 5, are_logits=False)


def test_parse_rules() -> None:
    assert parse_rating("Reasoning...\nScore: 7") == 7
    assert parse_rating("I'd give it 9/10.") == 9
    assert parse_rating("**8**") == 8
    assert parse_rating("Score: 14") is None and parse_rating("great answer") is None
    assert parse_yes_no("Yes, it is.") is True and parse_yes_no("no.") is False
    assert parse_yes_no("maybe") is None
    both = [TokenLogprob("Yes", math.log(0.6), (("Yes", math.log(0.6)), ("No", math.log(0.2))))]
    assert math.isclose(yes_probability(both) or 0, 0.75)
    only_no = [TokenLogprob(" No", math.log(0.9), ())]
    assert math.isclose(yes_probability(only_no) or 0, 0.1)
    assert yes_probability([TokenLogprob("Hmm", -0.1, ())]) is None


def test_step_aggregation() -> None:
    steps = [0.9, 0.5, 0.8]
    assert aggregate_steps(steps, "last") == 0.8
    assert aggregate_steps(steps, "min") == 0.5
    assert math.isclose(aggregate_steps(steps, "product"), 0.36)
    assert math.isclose(aggregate_steps(steps, "mean"), 2.2 / 3)
    with pytest.raises(ConfigError):
        aggregate_steps(steps, "max")
    with pytest.raises(VerifierError):
        aggregate_steps([], "min")
    assert split_steps("Step 1\n\n  \nStep 2\n\nStep 3") == ["Step 1", "Step 2", "Step 3"]


# -- process reward over any verifier -------------------------------------------------------------


def test_process_reward_verifier_scores_prefixes() -> None:
    def prefix_scorer(problem: Problem, batch: Sequence[Candidate]) -> list[float]:
        # A prefix is as good as its worst step so far: a WRONG step taints what follows.
        return [0.2 if "WRONG" in c.text else 0.9 for c in batch]

    verifier = ProcessRewardVerifier(
        PrefixStepScorer(as_verifier(prefix_scorer)), aggregation="min"
    )
    good, bad = score(verifier, ["2+2\n\nis 4", "2+2\n\nWRONG: 5\n\nso 5"])
    assert good.value == 0.9 and bad.value == 0.2
    assert bad.details["step_scores"] == [0.9, 0.2, 0.2]
    assert "weakest step 2" in bad.reason
    last = ProcessRewardVerifier(as_verifier(prefix_scorer), aggregation="mean")
    assert math.isclose(score(last, ["a\n\nWRONG"])[0].value, 0.55)
    # By name, with options: the same verifier, the plain function wrapped as a prefix scorer.
    built = create("verifier", "process_reward", step_scorer=prefix_scorer, aggregation="product")
    assert isinstance(built, ProcessRewardVerifier) and built.config.aggregation == "product"
    assert isinstance(built.step_scorer, PrefixStepScorer)
    (product,) = score(built, ["a\n\nWRONG\n\nb"])
    assert math.isclose(product.value, 0.9 * 0.2 * 0.2)
    assert product.details["step_scores"] == [0.9, 0.2, 0.2]
    with pytest.raises(ConfigError, match="unknown aggregation"):
        create("verifier", "process_reward", step_scorer=prefix_scorer, aggregation="max")


# -- served reward model --------------------------------------------------------------------------


def _good(text: str) -> bool:
    return "four" in text


def _pooling_row(model: str, text: str) -> list[Any]:
    """What /pooling answers per input, by the kind of model asked for."""
    if model == "rm-head":  # a reward head: one number
        return [1.5 if _good(text) else -0.5]
    if model == "rm-logits":  # two labels, raw logits
        return [0.0, 2.0] if _good(text) else [1.0, -1.0]
    if model == "rm-ambiguous":  # logits that happen to look like probabilities
        return [0.0, 1.0] if _good(text) else [1.0, 0.0]
    if model == "rm-steps":  # per-step label probabilities; the last step is the sequence's
        return [[0.5, 0.5], [0.2, 0.8] if _good(text) else [0.6, 0.4]]
    if model == "rm-base64":
        return "AAAAAA=="  # type: ignore[return-value]
    raise AssertionError(model)


class _RewardServer(BaseHTTPRequestHandler):
    """vLLM's /classify, /pooling and /score, answering in reverse index order with usage."""

    requests: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"path": self.path, "body": body})
        if self.path == "/classify":
            texts = body["input"]
            data = [
                {"index": i, "probs": [0.1, 0.9] if _good(t) else [0.7, 0.3]}
                for i, t in enumerate(texts)
            ]
        elif self.path == "/pooling":
            texts = body["input"]
            data = [
                {"index": i, "object": "pooling", "data": _pooling_row(body["model"], t)}
                for i, t in enumerate(texts)
            ]
        elif self.path == "/score":
            texts = body["text_2"]
            data = [
                {"index": i, "object": "score", "score": 0.75 if _good(t) else 0.25}
                for i, t in enumerate(texts)
            ]
        else:
            self.send_response(404)
            self.end_headers()
            return
        usage = {"prompt_tokens": 10 * len(texts), "total_tokens": 10 * len(texts)}
        reply = {"object": "list", "data": data[::-1], "usage": usage}
        payload = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass


@pytest.fixture
def reward_server() -> Iterator[str]:
    _RewardServer.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RewardServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


TEXTS = ["It is four.", "It is five.", "four!", "5", "four"]


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_served_reward_model_over_http(reward_server: str) -> None:
    verifier = create("verifier", "reward_model", base_url=reward_server, model="rm", batch_size=2)
    assert isinstance(verifier, ServedRewardModel)
    scores = score(verifier, TEXTS)
    assert [s.value for s in scores] == [0.9, 0.3, 0.9, 0.3, 0.9]
    assert len(_RewardServer.requests) == 3  # batches of 2, 2 and 1
    first = _RewardServer.requests[0]["body"]
    assert first["model"] == "rm" and "What is two plus two?" in first["input"][0]
    # The usage each reply reported rides on its batch's first score.
    assert sum(s.usage.prompt_tokens for s in scores if s.usage is not None) == 10 * len(TEXTS)
    broken = ServedRewardModel(base_url=reward_server, path="/nope")
    with pytest.raises(VerifierError, match="404"):
        score(broken, ["x"])


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("rm-head", [1.5, -0.5, 1.5, -0.5, 1.5]),
        (
            "rm-logits",
            [1 / (1 + math.exp(-2)), 1 / (1 + math.exp(2))] * 2 + [1 / (1 + math.exp(-2))],
        ),
        ("rm-steps", [0.8, 0.4, 0.8, 0.4, 0.8]),
    ],
)
def test_served_reward_model_over_vllm_pooling(
    reward_server: str, model: str, expected: list[float]
) -> None:
    verifier = ServedRewardModel(base_url=reward_server, api="pooling", model=model, batch_size=3)
    scores = score(verifier, TEXTS)
    assert [s.value for s in scores] == pytest.approx(expected, rel=1e-12)
    assert [r["path"] for r in _RewardServer.requests] == ["/pooling", "/pooling"]
    assert "What is two plus two?" in _RewardServer.requests[0]["body"]["input"][0]
    assert sum(s.usage.prompt_tokens for s in scores if s.usage is not None) == 10 * len(TEXTS)


def test_pooling_outputs_can_be_declared_logits(reward_server: str) -> None:
    options = {"base_url": reward_server, "api": "pooling", "model": "rm-ambiguous"}
    read_as_probabilities = score(ServedRewardModel(**options), ["four", "five"])
    assert [s.value for s in read_as_probabilities] == [1.0, 0.0]
    declared = score(ServedRewardModel(**options, pooling_logits=True), ["four", "five"])
    assert [s.value for s in declared] == pytest.approx([_sigmoid(1), _sigmoid(-1)], rel=1e-12)


def test_served_reward_model_over_vllm_score(reward_server: str) -> None:
    verifier = create("verifier", "reward_model", base_url=reward_server, api="score", model="ce")
    scores = score(verifier, TEXTS)
    assert [s.value for s in scores] == [0.75, 0.25, 0.75, 0.25, 0.75]
    (request,) = _RewardServer.requests
    assert request["path"] == "/score"
    assert request["body"] == {"model": "ce", "text_1": PROBLEM.prompt, "text_2": TEXTS}


def test_served_reward_model_refuses_what_it_cannot_read(reward_server: str) -> None:
    encoded = ServedRewardModel(base_url=reward_server, api="pooling", model="rm-base64")
    with pytest.raises(VerifierError, match="encoded"):
        score(encoded, ["four"])
    with pytest.raises(ConfigError, match="api must be one of"):
        ServedRewardModel(base_url=reward_server, api="embed")


def test_rewards_are_matched_to_inputs_by_index() -> None:
    reply = {"data": [{"index": 1, "score": 0.2}, {"index": 0, "score": 0.7}]}
    assert rewards_from_reply(reply, "score", 2) == [(0.7, [0.7]), (0.2, [0.2])]
    with pytest.raises(VerifierError, match="bad index"):
        rewards_from_reply({"data": [{"index": 0, "score": 1}] * 2}, "score", 2)
    with pytest.raises(VerifierError, match="2 results for 3 inputs"):
        rewards_from_reply(reply, "score", 3)
    with pytest.raises(VerifierError, match="no 'data' list"):
        rewards_from_reply({"error": "overloaded"}, "classify", 1)


# -- local transformers reward model --------------------------------------------------------------


def _tiny_model_dir(directory: Path, num_labels: int) -> Path:
    torch = pytest.importorskip("torch", reason="torch is not installed (ttscale[hf])")
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    tokenizers = pytest.importorskip("tokenizers", reason="tokenizers is not installed")
    words = ["what", "is", "two", "plus", "four", "five", "it", "the", "answer"]
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3}
    vocab.update({word: position + 4 for position, word in enumerate(words)})
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    backend.normalizer = tokenizers.normalizers.Lowercase()
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]"
    )
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        num_labels=num_labels,
    )
    model = transformers.BertForSequenceClassification(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_local_reward_model_from_a_path_is_batched_and_consistent(tmp_path: Path) -> None:
    path = _tiny_model_dir(tmp_path / "rm", num_labels=2)
    texts = ["It is four", "It is five", "the answer is four plus two", "five", "four"]
    small = LocalRewardModel(model=str(path), batch_size=2, device="cpu")
    large = create("verifier", "reward_model", model=str(path), batch_size=8, device="cpu")
    assert isinstance(large, LocalRewardModel)
    by_small, by_large = score(small, texts), score(large, texts)
    for a, b in zip(by_small, by_large, strict=True):
        assert 0 < a.value < 1 and math.isclose(a.value, b.value, abs_tol=1e-5)
    assert len({round(s.value, 6) for s in by_small}) > 1  # the text matters
    assert math.isclose(score(small, ["four"])[0].value, by_small[4].value, abs_tol=1e-6)


def test_local_reward_model_object_with_a_reward_head(tmp_path: Path) -> None:
    path = _tiny_model_dir(tmp_path / "rm1", num_labels=1)
    import torch
    import transformers

    model = transformers.AutoModelForSequenceClassification.from_pretrained(path)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    verifier = LocalRewardModel(model=model, tokenizer=tokenizer, device="cpu")
    (value,) = [s.value for s in score(verifier, ["It is four"])]
    encoded = tokenizer(
        [f"{PROBLEM.prompt}\n\nIt is four"], return_tensors="pt", padding=True, truncation=True
    )
    with torch.inference_mode():
        expected = float(model(**encoded).logits[0, 0])
    assert math.isclose(value, expected, abs_tol=1e-5)
    with pytest.raises(ConfigError, match="tokenizer"):
        LocalRewardModel(model=model)


# -- the LLM judge over the loopback server -------------------------------------------------------


def judge_answers(request: ScriptRequest) -> str:
    if "Score: N" in request.prompt:  # the pointwise template
        if "GOOD" in request.prompt:
            return "Correct and clear.\nScore: 9"
        if "MEH" in request.prompt:
            return "Partly right, 4/10"
        return "I cannot say."
    return "Yes" if "GOOD" in request.prompt else "No"


@pytest.fixture
def judge_server() -> Iterator[LoopbackServer]:
    with LoopbackServer(answers=judge_answers) as server:
        yield server


def run_judge(server: LoopbackServer, texts: Sequence[str], **options: Any) -> list[Score]:
    async def go() -> list[Score]:
        sampler = OpenAISampler(model="loopback", base_url=server.base_url, api_key="test")
        async with sampler:
            judge = create("verifier", "judge", sampler=sampler, **options)
            assert isinstance(judge, LLMJudge)
            return await judge.score(PROBLEM, candidates(*texts))

    return asyncio.run(go())


def test_pointwise_judge(judge_server: LoopbackServer) -> None:
    good, meh, silent = run_judge(judge_server, ["GOOD: 4", "MEH: 5", "??"], mode="pointwise")
    assert good.value == 0.9 and meh.value == 0.4
    assert silent.value is None and silent.verdict is None and "no rating" in silent.reason
    assert silent.details["unparsed"] is True  # no score, not a low one
    assert good.verdict is None


def test_yes_no_judge_reads_logprobs(judge_server: LoopbackServer) -> None:
    yes, no = run_judge(judge_server, ["GOOD: 4", "BAD: 5"], mode="yes_no")
    assert yes.verdict is True and no.verdict is False
    assert yes.details["sources"] == ["logprobs"]
    # The loopback server gives its chosen tokens a logprob of -0.01.
    assert math.isclose(yes.value, math.exp(-0.01), rel_tol=1e-6)
    assert math.isclose(no.value, 1 - math.exp(-0.01), rel_tol=1e-6)
    bodies = [r.body for r in judge_server.records if r.body]
    assert all(body.get("logprobs") for body in bodies)
