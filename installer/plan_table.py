"""`aiinfra plan`'s rows and table: plan.py's sizing of each profile's engines, as the operator reads it."""

from __future__ import annotations

from aiinfra.installer import plan
from aiinfra.installer.spec import HostSpec


def profile_fits(spec: HostSpec, profile: str) -> list[dict]:
    from aiinfra.agent.schema import VllmEngine

    gpu_gib = plan.gpu_memory_gib(spec.gpu_model, spec.gpu_memory_gb)
    rows: list[dict] = []
    for name in spec.profiles[profile]:
        engine = spec.engines[name]
        if isinstance(engine, VllmEngine):
            rows += [f.as_dict() for f in plan.fit(name, engine, plan.model_facts(engine, spec.model_mirror), gpu_gib)]
        else:
            rows += [{"engine": name, "gpu": gpu, "sized": False} for gpu in engine.gpus]
    return rows


def plan_table(rows: list[dict]) -> str:
    header = (
        "GPU",
        "ENGINE",
        "BUDGET",
        "WEIGHTS",
        "OVERHEAD",
        "KV CACHE",
        "FREE",
        "CONFIGURED",
        "MAX CONTEXT",
        "SEQS@CTX",
        "CTX@SEQS",
    )
    table: list[tuple[str, ...]] = [header]
    for r in rows:
        if not r.get("sized", True):
            table.append((str(r["gpu"]), r["engine"], "ollama: sized by the model it loads, not planned"))
            continue
        table.append(
            (
                str(r["gpu"]),
                r["engine"],
                *(
                    f"{r[k]:.1f}"
                    for k in ("budget_gib", "weights_gib", "overhead_gib", "kv_configured_gib", "free_gib")
                ),
                f"{r['context']} x {r['concurrency']}",
                str(r["max_context"]),
                str(r["max_concurrency_at_context"]),
                str(r["max_context_at_concurrency"]),
            )
        )
    widths = [max(len(row[i]) for row in table if len(row) == len(header)) for i in range(len(header))]
    lines = [
        "  "
        + "  ".join(
            cell.ljust(widths[i]) if i < 2 else cell.rjust(widths[i]) if len(row) > 3 else cell
            for i, cell in enumerate(row)
        ).rstrip()
        for row in table
    ]
    return "\n".join(
        [
            *lines,
            "  GiB. KV CACHE and FREE at the CONFIGURED context x sequences; a negative FREE means vLLM queues and",
            "  preempts beyond SEQS@CTX full-length sequences. MAX CONTEXT: one sequence alone. CTX@SEQS: context",
            "  each configured sequence can have when all run at once.",
        ]
    )
