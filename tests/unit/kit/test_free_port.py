"""The test harness's free_port: one agent takes several ports before it binds any, so the same
process must never be handed one port twice (an agent's router once met its own status listener)."""

from __future__ import annotations

from tests.harness import free_port


def test_free_port_never_hands_out_a_port_twice():
    ports = [free_port() for _ in range(2000)]  # drawn at random from ~22k: a repeat is near certain otherwise
    assert len(set(ports)) == len(ports)
