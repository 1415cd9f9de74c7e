"""The router reads an engine's token counts from the response's own usage object alone."""

from __future__ import annotations

import json

from aiinfra.agent.http.router import _usage_of


def test_the_usage_object_is_read_and_a_quoted_word_in_the_answer_is_not():
    body = {"choices": [{"message": {"content": 'the "usage": {"prompt_tokens": 999} key'}}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}}  # fmt: skip
    assert _usage_of(json.dumps(body).encode()) == {"usage": body["usage"]}


def test_no_usage_or_a_broken_one_counts_nothing():
    assert _usage_of(b'{"choices": [":"]}') is None
    assert _usage_of(b'{"choices": [], "x": "usage"}') is None
    assert _usage_of(b'{"usage": {"prompt_tokens": 7,') is None
    assert _usage_of(b'{"usage": null, "other": {"prompt_tokens": 5}}') == {"usage": None}
