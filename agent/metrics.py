"""Prometheus metrics of the agent and its router, in a registry of the agent's own."""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from aiinfra.agent.audit import audit_health
from aiinfra.agent.reconcile import Phase
from aiinfra.agent.status import Report

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class EngineCollector(Collector):
    """Engine state read from the supervisor at scrape time."""

    def __init__(self, status: Callable[[], Report]) -> None:
        self.status = status

    def collect(self) -> Iterator[Any]:
        report = self.status()
        phase = GaugeMetricFamily(
            "aiinfra_engine_phase", "1 for the engine's current phase", labels=["engine", "phase"]
        )
        desired = GaugeMetricFamily(
            "aiinfra_engine_desired", "1 if the active profile runs the engine", labels=["engine"]
        )
        restarts = CounterMetricFamily("aiinfra_engine_restarts", "Restarts by the agent", labels=["engine"])
        latency = GaugeMetricFamily(
            "aiinfra_engine_probe_latency_seconds", "Last readiness probe latency", labels=["engine"]
        )
        degraded = GaugeMetricFamily(
            "aiinfra_engine_degraded", "1 if a ready engine does not hold memory on exactly its GPUs", labels=["engine"]
        )
        identity = GaugeMetricFamily(
            "aiinfra_engine_identity_info",
            "What the engine started with: its model's manifest, program and launch",
            labels=["engine", "model_digest", "program", "args_digest"],
        )
        gate = GaugeMetricFamily(
            "aiinfra_engine_gate",
            "1 for the state of the last change's gate (due, gating, passed, failed: the identity before serves)",
            labels=["engine", "state"],
        )
        for name, engine in report["engines"].items():
            if (last := engine["gate"]) is not None:
                gate.add_metric([name, last["state"]], 1.0)
            if (started := engine["identity"]) is not None:
                identity.add_metric([name, started["model"], started["program"], started["args"]], 1.0)
            degraded.add_metric([name], 1.0 if engine.get("degraded") else 0.0)
            for p in Phase:
                phase.add_metric([name, p.value], 1.0 if engine["phase"] == p else 0.0)
            desired.add_metric([name], 1.0 if engine["desired"] else 0.0)
            restarts.add_metric([name], engine["restarts"])
            if engine["probe_latency_ms"] is not None:
                latency.add_metric([name], engine["probe_latency_ms"] / 1000)
        switches = CounterMetricFamily(
            "aiinfra_profile_switches", "Profile switches (operator, request, idle)", labels=["profile", "reason"]
        )
        switching = report.get("switching")
        for switch in switching["switches"] if switching else []:
            switches.add_metric([switch["profile"], switch["reason"]], switch["count"])
        energy = report.get("energy") or {}
        series = (("energy_joules", "joules", "GPU energy attributed to the engine ((idle): to none)"),
                  ("tokens", "tokens", "Prompt and completion tokens the router counted"),
                  ("busy_seconds", "busy_s", "Seconds with a request in flight"))  # fmt: skip
        for name, key, help_ in series:
            family = CounterMetricFamily(f"aiinfra_engine_{name}", help_, labels=["engine"])
            for engine, value in energy.get(key, {}).items():
                family.add_metric([engine], value)
            yield family
        yield from (phase, desired, restarts, latency, switches, degraded, identity, gate)


class AuditCollector(Collector):
    """The audit file's failed writes (a full disk): never silent."""

    def collect(self) -> Iterator[Any]:
        health = audit_health()
        if health is not None:
            yield CounterMetricFamily("aiinfra_audit_write_errors", "Audit log writes that failed",
                                      value=health["write_errors"])  # fmt: skip
            yield CounterMetricFamily("aiinfra_audit_lines_lost", "Audit lines a failed write lost",
                                      value=health["lines_lost"])  # fmt: skip


class GpuCollector(Collector):
    """GPU readings and the driver's state, in the style of the common GPU exporters."""

    def __init__(self, status: Callable[[], Report]) -> None:
        self.status = status

    def collect(self) -> Iterator[Any]:
        gpu = self.status().get("gpu")
        if gpu is None:
            return
        labels = ["gpu", "uuid", "name"]
        series = {
            "power_watts": ("power_draw_w", "Power draw"),
            "power_limit_watts": ("power_limit_w", "Power limit"),
            "temperature_celsius": ("temperature", "GPU temperature"),
            "memory_used_bytes": ("memory_used", "Memory used"),
            "memory_total_bytes": ("memory_total", "Memory"),
            "utilization_ratio": ("utilization", "Share of time a kernel ran (0-1)"),
            "persistence_mode": ("persistence", "1 if persistence mode is on"),
        }
        families = {
            name: GaugeMetricFamily(f"aiinfra_gpu_{name}", help_, labels=labels) for name, (_, help_) in series.items()
        }
        xids = CounterMetricFamily("aiinfra_gpu_xid_errors", "XID errors seen", labels=labels)
        for g in gpu["gpus"]:
            key = [str(g["index"]), g["uuid"], g["name"]]
            for name, (field, _) in series.items():
                value = float(g[field]) / (100 if field == "utilization" else 1)
                families[name].add_metric(key, value)
            xids.add_metric(key, g["xid_errors"])
        yield from families.values()
        yield xids
        up = GaugeMetricFamily("aiinfra_nvml_up", "1 if NVML answered on the last read", labels=["state"])
        up.add_metric([gpu["state"]], 1.0 if gpu["state"] == "ok" else 0.0)
        yield up
        if gpu["nvml_last_success"] is not None:
            yield GaugeMetricFamily(
                "aiinfra_nvml_last_success_timestamp_seconds", "Last good NVML read", value=gpu["nvml_last_success"]
            )
        driver = gpu["driver"]
        info = GaugeMetricFamily(
            "aiinfra_driver_info",
            "The NVIDIA driver: loaded, library, kernel module, pinned",
            labels=["loaded", "library", "kernel_module", "pinned"],
        )
        info.add_metric([str(driver[k] or "") for k in ("loaded", "library", "kernel_module", "pinned")], 1.0)
        yield info
        reapplied = CounterMetricFamily("aiinfra_gpu_reapplied", "Settings re-applied after drift", labels=["setting"])
        for setting in ("power", "persistence"):
            reapplied.add_metric([setting], gpu["reapplied"].get(setting, 0))
        yield reapplied
        yield CounterMetricFamily(
            "aiinfra_driver_drift_restarts",
            "Coordinated engine restarts after a driver change",
            value=gpu["drift_restarts"],
        )


_BOUNDS = [floatToGoString(b) for b in LATENCY_BUCKETS] + ["+Inf"]  # the `le` labels, as prometheus_client writes them


class _Histogram:
    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)  # per bucket, not cumulative; the last is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, value)] += 1  # a bucket holds values <= its bound
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        running, out = 0, list[tuple[str, float]]()
        for bound, count in zip(_BOUNDS, self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


class RouterSeries(Collector):
    """The router's per-request series, kept as plain numbers and made into metric families when
    scraped: prometheus_client's labelled children take a lock and check their kind on every update,
    which was half of what the router spent recording a request (cProfile under bench/router.py).
    Labels come only from the spec's model names, the one unknown label and HTTP statuses: the series
    stay bounded."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str], int] = {}
        self.tokens: dict[tuple[str, str], int] = {}
        self.latency: dict[str, _Histogram] = {}
        self.ttft: dict[str, _Histogram] = {}

    def observe(
        self, model: str, status: int, latency_s: float, ttft_s: float | None, prompt: int, completion: int
    ) -> None:
        key = (model, str(status))
        self.requests[key] = self.requests.get(key, 0) + 1
        if status != 200:
            return
        latency = self.latency.get(model)
        if latency is None:
            latency = self.latency[model] = _Histogram()
            self.ttft[model] = _Histogram()
            self.tokens[model, "prompt"] = self.tokens[model, "completion"] = 0
        latency.observe(latency_s)
        if ttft_s is not None:
            self.ttft[model].observe(ttft_s)
        self.tokens[model, "prompt"] += prompt
        self.tokens[model, "completion"] += completion

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "aiinfra_router_requests", "Requests through the router", labels=["model", "status"]
        )
        for labels, count in list(self.requests.items()):
            requests.add_metric(list(labels), count)
        yield requests
        for name, help_, histograms in (
            ("aiinfra_router_request_duration_seconds", "Time to the whole answer", self.latency),
            ("aiinfra_router_time_to_first_token_seconds", "Time to the first byte of the answer", self.ttft),
        ):
            family = HistogramMetricFamily(name, help_, labels=["model"])
            for model, histogram in list(histograms.items()):
                family.add_metric([model], histogram.buckets(), histogram.total)
            yield family
        tokens = CounterMetricFamily(
            "aiinfra_router_tokens", "Tokens through the router", labels=["model", "direction"]
        )
        for labels, count in list(self.tokens.items()):
            tokens.add_metric(list(labels), count)
        yield tokens


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.router = RouterSeries()
        self.registry.register(self.router)
        # Labelled by engine: the spec's names only, so clients cannot add series.
        self.queue_waiting = Gauge(
            "aiinfra_router_queue_waiting", "Requests waiting for their engine to be ready", ["engine"],
            registry=self.registry,
        )  # fmt: skip
        self.queue_wait = Histogram(
            "aiinfra_router_queue_wait_seconds", "Time requests waited for their engine to be ready", ["engine"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.rate_limited = Counter(
            "aiinfra_router_rate_limited", "Requests refused by a key's rate limit", ["key"], registry=self.registry
        )
        # Labelled by the router's own statuses and codes: a fixed set.
        self.refused = Counter(
            "aiinfra_router_refused", "Requests and connections refused before a valid key (by status and code)",
            ["status", "code"], registry=self.registry,
        )  # fmt: skip
        self.registry.register(AuditCollector())

    def watch_engines(self, status: Callable[[], Report]) -> None:
        self.registry.register(EngineCollector(status))
        self.registry.register(GpuCollector(status))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


# vLLM's own series (tokens, KV cache, queue, TTFT/ITL), re-served by the agent. vLLM labels its
# engine core's index `engine`; ours names the aiinfra engine, so theirs becomes `exported_engine`,
# as Prometheus's own federation renames a clashing label.
ENGINE_PREFIXES = ("vllm:",)


async def engine_families(
    session: aiohttp.ClientSession, engines: Mapping[str, str], timeout_s: float = 2
) -> list[Metric]:
    """Scrape ENGINES (name → base URL) at once; their vllm:* families with an `engine` label each. An
    engine that does not answer in time is left out of this scrape, never waited for."""

    async def scrape(url: str) -> str | None:
        try:
            async with session.get(f"{url}/metrics", timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
                return await resp.text() if resp.status == 200 else None
        except (aiohttp.ClientError, TimeoutError):
            return None

    texts = await asyncio.gather(*(scrape(url) for url in engines.values()))
    merged: dict[str, Metric] = {}
    for name, text in zip(engines, texts, strict=True):
        if text is None:
            continue
        try:
            families = list(text_string_to_metric_families(text))
        except ValueError:  # not Prometheus text: nothing of it is served
            continue
        for family in families:
            if not family.name.startswith(ENGINE_PREFIXES):
                continue
            into = merged.setdefault(family.name, Metric(family.name, family.documentation, family.type, family.unit))
            for sample in family.samples:
                labels = {("exported_engine" if k == "engine" else k): v for k, v in sample.labels.items()}
                into.add_sample(sample.name, {"engine": name, **labels}, sample.value, sample.timestamp)
    return list(merged.values())


class _Families:
    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterator[Metric]:
        yield from self.families


def exposition_of(families: Iterable[Metric]) -> bytes:
    return generate_latest(_Families(families))
