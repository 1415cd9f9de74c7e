"""What the router and the API see of the loop: a view of the engines at one moment, a signal when one
changes, the request to switch profile, and the traffic counters the router feeds (Engines)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from aiinfra.agent.engines import Launch
from aiinfra.agent.identity import Identity
from aiinfra.agent.reconcile import EngineState, Phase
from aiinfra.agent.schema import SwitchPolicy
from aiinfra.agent.traffic import Traffic


@dataclass(frozen=True)
class View:
    """The profile and each engine's state at one moment."""

    profile: str | None
    profiles: Mapping[str, list[str]]
    desired: tuple[str, ...]
    states: Mapping[str, EngineState]
    launches: Mapping[str, Launch]
    served: frozenset[str]  # every name any engine serves, in any profile
    switching: Mapping[str, SwitchPolicy]  # the profiles a request may switch to

    def ready(self, name: str) -> bool:
        return self.states[name].phase == Phase.READY


class Engines(Protocol):
    traffic: Traffic

    @property
    def serving(self) -> Mapping[str, Identity]:
        """What each engine started with: its answers carry it."""

    def view(self) -> View: ...

    async def changed(self, name: str, timeout: float) -> None:
        """Return when engine NAME's phase or the profile changes, or after TIMEOUT seconds."""

    def request_switch(self, profile: str, key: str | None, model: str) -> float:
        """Switch to PROFILE for a request (KEY's, for MODEL), unless the active profile must stay a
        while longer: then the seconds left (0: switched)."""
