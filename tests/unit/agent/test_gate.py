"""The gate's checks on a golden answer, the agreement score, and the records it keeps."""

from __future__ import annotations

import pytest

from aiinfra.agent import gate
from aiinfra.agent.engines import Launch
from aiinfra.agent.identity import Identity
from aiinfra.agent.schema import Gate, Golden


def test_each_check_names_what_is_wrong_with_the_answer():
    assert gate.problem(Golden(prompt="p", contains="4", max_latency_s=2), "2+2=4", 1.0) is None
    assert "lacks '4'" in gate.problem(Golden(prompt="p", contains="4"), "five", 0.1)
    assert "does not match '^[0-9]+$'" in gate.problem(Golden(prompt="p", matches="^[0-9]+$"), "12a", 0.1)
    assert "not valid JSON" in gate.problem(Golden(prompt="p", valid_json=True), '{"a": ', 0.1)
    assert gate.problem(Golden(prompt="p", valid_json=True), '{"a": 1}', 0.1) is None
    assert "over its bound of 2s" in gate.problem(Golden(prompt="p", max_latency_s=2), "x", 2.5)


def test_agreement_is_the_share_of_the_longer_answer_before_the_first_difference():
    assert gate.agreement("same", "same") == 1.0
    assert gate.agreement("abcd", "abXd") == 0.5
    assert gate.agreement("abcd", "ab") == 0.5  # one stopped early
    assert gate.agreement("", "x") == 0.0


def test_a_golden_set_must_hold_valid_expressions():
    with pytest.raises(ValueError, match="not a regular expression"):
        Gate.model_validate({"golden": [{"prompt": "p", "matches": "("}]})


def test_the_records_keep_no_secret_and_give_the_launch_back_with_the_key(tmp_path):
    records = gate.Records(tmp_path / "gates.json")
    launch = Launch("a", ["vllm", "serve", "/m"], {"VLLM_API_KEY": "s3cret", "X": "1"}, 8001, "vllm", ["m"],
                    api_key="s3cret", model_dir="/m")  # fmt: skip
    identity = Identity("d" * 64, "vllm 0.32.0", "a" * 64)
    records.passed("a", identity, launch, {"2+2=": "four"})
    assert "s3cret" not in (tmp_path / "gates.json").read_text()
    again = gate.Records(tmp_path / "gates.json")
    assert again.launch("a", "s3cret") == launch and again.answers("a") == {"2+2=": "four"}
    assert again.identity("a") == identity and again.kept()["/m"] == "engine a"
    (tmp_path / "gates.json").write_text("{not json")
    assert gate.Records(tmp_path / "gates.json").identity("a") is None  # damaged: nothing kept, no crash


def test_aiinfra_status_says_which_change_failed_its_gate_and_what_serves():
    from aiinfra.agent.client import format_status

    engine = {"desired": True, "phase": "ready", "pid": 7, "port": 8001, "restarts": 0, "since": None,
              "degraded": None, "last_error": None, "cloud": False}  # fmt: skip
    failed = {"state": "failed", "check": "golden prompt 1 ('2+2='): the answer 'x' lacks '4'", "serving": {"m": 1}}
    report = {"profile": "p", "backend": "systemd", "engines": {"a": engine | {"gate": failed},
              "b": engine | {"gate": {"state": "gating"}}, "c": engine | {"gate": None}}}  # fmt: skip
    text = format_status(report)  # type: ignore[arg-type]
    assert "gate: a's change failed (golden prompt 1 ('2+2='): the answer 'x' lacks '4'); the identity before " \
           "serves; restart it to try again" in text  # fmt: skip
    assert "gate: b's change is being checked" in text and "gate: c" not in text


def test_the_regression_check_compares_only_the_prompts_both_identities_were_asked():
    import asyncio

    async def ask(launch: Launch, golden: Golden, max_tokens: int) -> tuple[str, float]:
        return {"a": "same", "b": "new text"}.get(golden.prompt, "?"), 0.1

    launch = Launch("e", ["vllm"], {}, 8001, "vllm", ["m"])
    both = Gate(golden=[Golden(prompt="a"), Golden(prompt="b")], agreement=0.9)
    ran = asyncio.run(gate.run(ask, launch, both, {"a": "same", "c": "gone"}, regression=True))
    assert (ran.passed, ran.agreement) == (True, 1.0)  # b is new, c no longer asked: a alone compared
    ran = asyncio.run(gate.run(ask, launch, both, {"a": "same", "b": "old text"}, regression=True))
    assert not ran.passed and ran.agreement == 0.5 and "agree 0.50" in ran.check  # (1 + 0) / 2
    assert asyncio.run(gate.run(ask, launch, both, {"c": "gone"}, regression=True)).agreement is None
