"""The lab host's router as a client sees it: `aiinfra lab endpoint`."""

from __future__ import annotations

import json
import urllib.request

from aiinfra.agent import box
from aiinfra.installer.lab.host import address
from aiinfra.installer.workstation import EnvironmentProblem, lab_dir


def endpoint(host: str) -> dict:
    """The lab host's router as a client sees it: its URL, the lab key's file, the first ready model,
    and that model's answer to one chat request (proof that the example works)."""
    key_file = lab_dir() / f"{host}.key"
    if not (host_address := address(host)) or not key_file.exists():
        raise EnvironmentProblem(f"lab host {host} is not up (aiinfra lab up {host}, then aiinfra install)")
    url = f"http://{host_address}:{box.ROUTER_LISTEN.rpartition(':')[2]}/v1"
    headers = {"Authorization": f"Bearer {key_file.read_text().strip()}", "Content-Type": "application/json"}

    def call(path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        try:
            with urllib.request.urlopen(urllib.request.Request(url + path, data, headers), timeout=30) as answer:
                return json.loads(answer.read())
        except (OSError, ValueError) as exc:
            raise EnvironmentProblem(f"the router at {url} did not answer {path}: {exc}") from None

    ready = [m for m in call("/models")["data"] if m.get("ready")]
    if not ready:
        raise EnvironmentProblem(f"the router at {url} has no ready model yet (aiinfra status --host {host})")
    model = ready[0]["id"]
    body = {"model": model, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 16}
    reply = call("/chat/completions", body)
    # vLLM signs its answers "vllm-<version>-<hash>"; the kit's stub engine does not.
    fingerprint = reply.get("system_fingerprint") or ""
    served_by = "the stub engine (test double)"
    if fingerprint.startswith("vllm-"):
        served_by = f"vLLM {fingerprint.split('-')[1]}"
    return {"url": url, "key_file": str(key_file), "model": model, "engine": ready[0].get("owned_by"),
            "served_by": served_by, "request": body, "answer": reply["choices"][0]["message"]["content"],
            "completion_tokens": (reply.get("usage") or {}).get("completion_tokens")}  # fmt: skip
