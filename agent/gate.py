"""The gate a change of what an engine serves passes before it gets traffic, and what it keeps.

An engine whose identity (identity.py) differs from the one that last passed starts, and is asked its
golden set (the spec's prompts, each answer checked within its latency bound; none given: one request
answered in time) with greedy decoding; where the model stays the same (another program or other
arguments), those answers are also held against the ones the identity before gave, as an agreement
score. Passed: it serves, and it is what the next change is held to. Failed: the launch that passed
before starts again. Records (gates.json, beside the identities' history) keep each engine's passed
launch, its greedy answers and the identity it refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp

from aiinfra.agent.engines import Launch, venv_of
from aiinfra.agent.files import write_private
from aiinfra.agent.identity import SECRETS, Identity
from aiinfra.agent.schema import Gate, Golden

DEFAULT_PROMPT = Golden(prompt="Hello")  # no golden set: one request answered within its bound


def golden_set(gate: Gate) -> list[Golden]:
    return gate.golden or [DEFAULT_PROMPT]


def agreement(before: str, after: str) -> float:
    """1 for the same answer; else the share of the longer one the two agree on before they differ."""
    if before == after:
        return 1.0
    pairs = enumerate(zip(before, after, strict=False))
    same = next((i for i, (b, a) in pairs if b != a), min(len(before), len(after)))
    return same / max(len(before), len(after))


def problem(golden: Golden, answer: str, latency_s: float) -> str | None:
    """What is wrong with ANSWER to GOLDEN's prompt; None: nothing."""
    if latency_s > golden.max_latency_s:
        return f"answered in {latency_s:.1f}s, over its bound of {golden.max_latency_s:g}s"
    if golden.contains is not None and golden.contains not in answer:
        return f"the answer {_short(answer)} lacks {golden.contains!r}"
    if golden.matches is not None and re.search(golden.matches, answer) is None:
        return f"the answer {_short(answer)} does not match {golden.matches!r}"
    if golden.valid_json:
        try:
            json.loads(answer)
        except ValueError:
            return f"the answer {_short(answer)} is not valid JSON"
    return None


def _short(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:57] + "...")


@dataclass(frozen=True)
class Outcome:
    passed: bool
    check: str  # what failed, naming the prompt ("" when passed)
    answers: dict[str, str]  # prompt → greedy answer
    agreement: float | None  # None: no regression check was made


async def ask(session: aiohttp.ClientSession, launch: Launch, golden: Golden, max_tokens: int) -> tuple[str, float]:
    """The greedy answer to one golden prompt and how long it took; ValueError naming what went wrong."""
    body = {"model": launch.served[0], "prompt": golden.prompt, "max_tokens": max_tokens, "temperature": 0}
    started = time.monotonic()
    try:
        async with session.post(f"{launch.base_url}/v1/completions", json=body, headers=launch.auth,
                                timeout=aiohttp.ClientTimeout(total=golden.max_latency_s)) as resp:  # fmt: skip
            if resp.status != 200:
                raise ValueError(f"answered HTTP {resp.status}")
            text = (await resp.json())["choices"][0]["text"]
    except TimeoutError:
        raise ValueError(f"no answer within its bound of {golden.max_latency_s:g}s") from None
    except (aiohttp.ClientError, KeyError, IndexError, TypeError) as exc:
        raise ValueError(f"no answer: {exc.__class__.__name__}") from None
    return str(text), time.monotonic() - started


Ask = Callable[[Launch, Golden, int], Awaitable[tuple[str, float]]]  # the probes' ask, bound to their session


async def answers(ask: Ask, launch: Launch, gate: Gate) -> dict[str, str] | None:
    """The engine's greedy answers to its golden set, by prompt (kept for the next change's regression
    check); None where it could not give them all."""
    found = {}
    for golden in golden_set(gate):
        try:
            found[golden.prompt] = (await ask(launch, golden, gate.max_tokens))[0]
        except ValueError:
            return None
    return found


async def run(ask: Ask, launch: Launch, gate: Gate, before: dict[str, str] | None, regression: bool) -> Outcome:
    """The golden set, then (REGRESSION) the agreement with BEFORE's answers to the prompts both were asked."""
    if not launch.served:  # an Ollama engine with no model: being ready is all there is to check
        return Outcome(True, "", {}, None)
    got: dict[str, str] = {}
    for number, golden in enumerate(golden_set(gate), 1):
        name = f"golden prompt {number} ({_short(golden.prompt)})"
        try:
            answer, latency = await ask(launch, golden, gate.max_tokens)
        except ValueError as exc:
            return Outcome(False, f"{name}: {exc}", got, None)
        if (wrong := problem(golden, answer, latency)) is not None:
            return Outcome(False, f"{name}: {wrong}", got, None)
        got[golden.prompt] = answer
    shared = [prompt for prompt in got if prompt in (before or {})]
    if not regression or before is None or not shared:
        return Outcome(True, "", got, None)
    score = sum(agreement(before[prompt], got[prompt]) for prompt in shared) / len(shared)
    if score < gate.agreement:
        check = (f"regression: the greedy answers agree {score:.2f} with the previous identity's, under the "
                 f"{gate.agreement:g} asked for")  # fmt: skip
        return Outcome(False, check, got, score)
    return Outcome(True, "", got, score)


def regression_due(gate: Gate, before: Identity, after: Identity) -> bool:
    if gate.regression == "auto":
        return before.model == after.model
    return gate.regression == "always"


def launch_record(launch: Launch) -> dict[str, Any]:
    """A launch as kept on disk: its secrets left out (the agent's key is derived again when it starts)."""
    record = asdict(launch)
    record["env"] = {k: v for k, v in launch.env.items() if k not in SECRETS}
    record.pop("api_key")
    return record


def launch_from(record: dict[str, Any], api_key: str | None) -> Launch:
    env = dict(record["env"]) | ({"VLLM_API_KEY": api_key} if api_key and record["runtime"] == "vllm" else {})
    return Launch(**{**record, "env": env, "api_key": api_key if record["runtime"] == "vllm" else None})


class Records:
    """Engine → {passed: the launch, identity and greedy answers that last passed (or first served),
    previous: the one before it, refused: the identity that last failed and why}."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.engines: dict[str, dict[str, Any]] = {}
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(path.read_text())
            if isinstance(data, dict):
                self.engines = {k: v for k, v in data.items() if isinstance(v, dict)}

    def _get(self, engine: str, which: str) -> dict[str, Any] | None:
        entry = self.engines.get(engine, {}).get(which)
        return entry if isinstance(entry, dict) else None

    def identity(self, engine: str, which: str = "passed") -> Identity | None:
        entry = self._get(engine, which)
        with contextlib.suppress(KeyError, TypeError):
            return Identity(**entry["identity"]) if entry else None
        return None

    def launch(self, engine: str, api_key: str | None) -> Launch | None:
        entry = self._get(engine, "passed")
        with contextlib.suppress(KeyError, TypeError):
            return launch_from(entry["launch"], api_key) if entry else None
        return None

    def answers(self, engine: str) -> dict[str, str] | None:
        entry = self._get(engine, "passed")
        found = entry.get("answers") if entry else None
        return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else None

    def passed(self, engine: str, identity: Identity, launch: Launch, answers: dict[str, str] | None) -> None:
        entry = self.engines.setdefault(engine, {})
        if (old := entry.get("passed")) and old.get("identity") != asdict(identity):
            entry["previous"] = old
        entry["passed"] = {"identity": asdict(identity), "launch": launch_record(launch), "at": round(time.time(), 3),
                           "answers": answers}  # fmt: skip
        self._save()

    def noted_answers(self, engine: str, answers: dict[str, str]) -> None:
        entry = self._get(engine, "passed")
        if entry is not None:
            entry["answers"] = answers
            self._save()

    def refused(self, engine: str, identity: Identity, check: str, gate: Gate) -> None:
        """IDENTITY failed GATE: not tried again under the same gate (the operator's restart retries it)."""
        refused = {"identity": asdict(identity), "check": check, "gate": gate.model_dump(), "at": round(time.time(), 3)}
        self.engines.setdefault(engine, {})["refused"] = refused
        self._save()

    def refusal(self, engine: str, identity: Identity, gate: Gate) -> str | None:
        """Why IDENTITY was refused under GATE; None: it was not."""
        entry = self._get(engine, "refused")
        if entry is None or self.identity(engine, "refused") != identity or entry.get("gate") != gate.model_dump():
            return None
        return str(entry.get("check", ""))

    def kept(self) -> dict[str, str]:
        """Real path of each model folder and vLLM environment a kept launch (passed, and the one before it)
        names → why retirement must leave it."""
        kept: dict[str, str] = {}
        for engine, entry in self.engines.items():
            for which, why in (("previous", f"the way back for engine {engine}"), ("passed", f"engine {engine}")):
                launch = entry[which].get("launch", {}) if isinstance(entry.get(which), dict) else {}
                if launch.get("model_dir"):
                    kept[os.path.realpath(launch["model_dir"])] = why
                if launch.get("runtime") == "vllm" and launch.get("argv"):
                    kept[str(venv_of(launch["argv"][0]))] = why
        return kept

    def _save(self) -> None:
        with contextlib.suppress(OSError):  # a record is worth less than a running agent
            write_private(self.path, json.dumps(self.engines).encode())
