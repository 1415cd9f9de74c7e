"""The router reads an engine's token counts from the answer's own top-level usage object alone: a
parser, not a text search, so that neither a token reading "usage" nor an object keyed "usage"
elsewhere (vLLM's prompt_logprobs come after usage) is taken for it."""

from __future__ import annotations

import json

import pytest

from aiinfra.agent.http.router import Exchange, Router, UsageScan, _json_or_none

USAGE = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
DECOYED = {
    "choices": [{"message": {"content": 'the "usage": {"prompt_tokens": 999} key'},
                 "logprobs": {"content": [{"token": "usage", "top_logprobs": [{"token": '"usage": {'}]}]}}],
    "usage": USAGE,
    "prompt_logprobs": [None, {"1": {"decoded_token": "usage"}}, {"usage": {"prompt_tokens": 0}}],
}  # fmt: skip


def counted(parsed) -> tuple[int, int]:
    exchange = Exchange(started=0)
    Router._count_usage(exchange, parsed)
    return exchange.prompt_tokens, exchange.completion_tokens


def test_a_whole_answer_is_counted_by_its_own_usage_not_the_decoys():
    assert counted(_json_or_none(json.dumps(DECOYED).encode())) == (7, 3)


@pytest.mark.parametrize("part", [1, 7, 4096])
def test_an_answer_passed_through_in_parts_is_counted_by_its_own_usage(part):
    data = json.dumps(DECOYED).encode()
    scan = UsageScan()
    for at in range(0, len(data), part):
        scan.feed(data[at : at + part])
    assert counted(scan.parsed()) == (7, 3)


def test_no_usage_or_a_broken_answer_counts_nothing():
    for data in (b'{"choices": [":"]}', b'{"choices": [], "x": "usage"}', b'{"usage": {"prompt_tokens": 7,',
                 b"[1, 2]", b"not json"):  # fmt: skip
        scan = UsageScan()
        scan.feed(data)
        assert counted(scan.parsed()) == (0, 0) and counted(_json_or_none(data)) == (0, 0)
