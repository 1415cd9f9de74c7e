"""Each engine's gate as the loop runs it: whether a start is due one, the gate runs (and the greedy
answers kept for the next) in flight, their outcomes, the launch to go back to, and the gate's part of
the status. The loop (supervisor.py) moves the engines' states; what a gate checks is gate.py's."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from aiinfra.agent import gate, identity
from aiinfra.agent.audit import audit
from aiinfra.agent.config import AgentConfig
from aiinfra.agent.engines import Launch
from aiinfra.agent.identity import Identity


class Gatekeeper:
    def __init__(self, config: AgentConfig, configured: dict[str, Launch], clock: Callable[[], float],
                 ask: gate.Ask) -> None:  # fmt: skip
        self.config = config
        self.configured = configured  # each engine's launch as the configuration says
        self.clock = clock
        self.ask = ask
        self.records = gate.Records(Path(config.data_dir) / "gates.json")
        self.targets = {name: identity.of(target) for name, target in configured.items()}
        self.runs: dict[str, asyncio.Task[gate.Outcome]] = {}
        self.captures: dict[str, asyncio.Task[dict[str, str] | None]] = {}
        self.asked: dict[str, Identity] = {}  # the identity each engine's greedy answers were last asked of
        self.reports: dict[str, dict[str, Any]] = {}  # engine → the gate's part of its status
        self.times: dict[str, dict[str, float]] = {}  # engine → when the change's steps began

    def launch(self, name: str) -> Launch:
        """What engine NAME starts with: its configured launch, or, where that identity was refused and
        the configuration still names it, the launch that passed before."""
        wanted = self.targets[name]
        refusal = self.records.refusal(name, wanted, self.config.engines[name].gate)
        back = self.records.launch(name, self.configured[name].api_key)
        if refusal is not None and back is not None:
            self.targets[name] = self.records.identity(name) or wanted
            self.reports[name] = self._report("failed", wanted, check=refusal, serving=self.targets[name])
            return back
        passed = self.records.identity(name)
        if passed is not None and passed != self.targets[name]:
            self.reports[name] = self._report("due", self.targets[name], serving=passed)
        return self.configured[name]

    def retry(self, name: str) -> Launch:
        """The operator's restart: a refused identity gets its gate again."""
        self.records.engines.get(name, {}).pop("refused", None)
        self.targets[name] = identity.of(self.configured[name])
        self.reports.pop(name, None)
        return self.launch(name)

    def due(self, name: str, started: Identity) -> bool:
        passed = self.records.identity(name)
        return passed is not None and passed != started

    def ready(self, name: str, serving: Identity, running: Launch) -> bool:
        """Engine NAME is ready, serving SERVING with RUNNING. Its record is kept (a first start, or an
        adoption, passed no gate: there was nothing to hold it to), with its greedy answers to the golden
        set where the spec gives one; True: it serves other than its target and is to be replaced now."""
        if self.records.identity(name) != serving and serving == self.targets[name]:
            self.records.passed(name, serving, running, None)
            if self.reports.get(name, {}).get("state") == "due":
                del self.reports[name]
        golden = self.config.engines[name].gate.golden
        if golden and self.records.identity(name) == serving and self.records.answers(name) is None:
            task = self.captures.get(name)
            if task is None and self.asked.get(name) != serving:  # asked once an identity: a failure is not retried
                self.asked[name] = serving
                asked = gate.answers(self.ask, running, self.config.engines[name].gate)
                self.captures[name] = asyncio.create_task(asked)
                return False
            if task is not None and not task.done():
                return False
            if task is not None and (answers := self.captures.pop(name).result()) is not None:
                self.records.noted_answers(name, answers)
        if serving == self.targets[name]:
            self.back(name)
            return False
        self.times[name] = {"stop": self.clock()}
        self.reports[name] = self._report("due", self.targets[name], serving=serving)
        return True

    def started(self, name: str, due: bool) -> None:
        if due:  # a changed identity: its start is a step of the change
            self.times.setdefault(name, {})["start"] = self.clock()

    def begin(self, name: str, running: Launch, serving: Identity) -> None:
        """The changed identity is ready: its gate runs."""
        if name in self.runs:
            return
        self.times.setdefault(name, {})["gate"] = self.clock()
        engine = self.config.engines[name]
        before = self.records.identity(name)
        regression = before is not None and gate.regression_due(engine.gate, before, serving)
        self.reports[name] = self._report("gating", serving)
        self.runs[name] = asyncio.create_task(gate.run(self.ask, running, engine.gate,
                                                       self.records.answers(name), regression))  # fmt: skip

    def outcome(self, name: str) -> gate.Outcome | None:
        task = self.runs.get(name)
        if task is None or not task.done():
            return None
        del self.runs[name]
        return task.result()

    def passed(self, name: str, serving: Identity, running: Launch, outcome: gate.Outcome) -> None:
        previous = self.records.identity(name)
        golden = self.config.engines[name].gate.golden  # none given: no answers to hold the next change to
        self.records.passed(name, serving, running, outcome.answers if golden else None)
        self.reports[name] = self._report("passed", serving, agreement=outcome.agreement, took=self._took(name))
        self.times.pop(name, None)
        self._audit(name, "passed", serving, previous, "")

    def failed(self, name: str, serving: Identity, check: str) -> Launch | None:
        """The launch to go back to (the one that passed before), or None where there is none."""
        back = self.records.launch(name, self.configured[name].api_key)
        previous = self.records.identity(name)
        if back is None or previous is None or previous == serving:
            self.reports[name] = self._report("failed", serving, check=check, serving=None, took=self._took(name))
            self._audit(name, "failed", serving, None, check)
            return None
        self.records.refused(name, serving, check, self.config.engines[name].gate)
        self.targets[name] = previous
        self.times.setdefault(name, {})["rollback"] = self.clock()
        self.reports[name] = self._report("failed", serving, check=check, serving=previous, took=self._took(name))
        self._audit(name, "failed", serving, previous, check)
        return back

    def back(self, name: str) -> None:
        """The identity gone back to is ready: how long the rollback took."""
        report = self.reports.get(name)
        if report is not None and report["state"] == "failed" and "rollback" in self.times.get(name, {}):
            report["took"] = self._took(name)
            self.times.pop(name)

    def stopped(self, name: str) -> None:
        for tasks in (self.runs, self.captures):
            task = tasks.pop(name, None)
            if task is not None:
                task.cancel()

    async def close(self) -> None:
        for task in [*self.runs.values(), *self.captures.values()]:
            task.cancel()

    def _took(self, name: str) -> dict[str, float]:
        """Seconds each step of the change took: stop, start, gate and (a failed one) rollback."""
        marks = self.times.get(name, {})
        order = [step for step in ("stop", "start", "gate", "rollback") if step in marks]
        ends = [marks[step] for step in order[1:]] + [self.clock()]
        return {step: round(end - marks[step], 2) for step, end in zip(order, ends, strict=True)}

    def _report(self, state: str, tried: Identity, **more: Any) -> dict[str, Any]:
        if isinstance(more.get("serving"), Identity):
            more["serving"] = asdict(more["serving"])
        return {"state": state, "identity": asdict(tried), "at": round(time.time(), 3), **more}

    def _audit(self, name: str, result: str, tried: Identity, previous: Identity | None, check: str) -> None:
        serving = tried if result == "passed" else previous
        audit(json.dumps({"time": round(time.time(), 3), "event": "gate", "engine": name, "result": result,
                          "identity": asdict(tried), "check": check,
                          "serving": serving and asdict(serving)}))  # fmt: skip
