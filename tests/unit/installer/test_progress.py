"""The live view and the summary are built from ansible-runner events alone: fed here by hand."""

from __future__ import annotations

import io

from aiinfra.agent.exits import EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE
from aiinfra.installer.run import HostTally, Progress, RunSummary


def task(name: str, role: str = "host_base") -> dict:
    return {"event": "playbook_on_task_start", "event_data": {"task": name, "role": role}}


def result(kind: str, host: str, **res) -> dict:
    return {"event": kind, "event_data": {"host": host, "res": res}}


EVENTS = [
    task("Install the base packages"),
    result("runner_on_ok", "thor", changed=True),
    result("runner_on_ok", "odin", changed=False),
    task("Create the aiinfra user"),
    result("runner_on_failed", "odin", msg="useradd: group 'x' does not exist"),
    result("runner_on_skipped", "thor"),
    task("Report whether a reboot is still pending", role="host_reboot"),
    result("runner_on_ok", "thor", ansible_stats={"data": {"aiinfra_reboot_required": True}}),
    task("Tell the run summary", role="network_vlans"),
    result("runner_on_ok", "odin", ansible_stats={"data": {"aiinfra_network_change_staged": True}}),
    task("Report it (the run summary shows it)", role="model_storage"),
    result(
        "runner_on_ok",
        "odin",
        ansible_stats={"data": {"aiinfra_model_storage": "/mnt/nvme on /dev/nvme1n1: 812.3 GiB free of 1863.0 GiB\n"}},
    ),
]


def feed(progress: Progress) -> Progress:
    for event in EVENTS:
        assert progress(event) is True
    progress.end()
    return progress


def test_counts_failures_and_reboots_per_host():
    progress = feed(Progress(out=None))
    assert progress.tally == {
        "thor": HostTally(ok=2, changed=1, skipped=1, reboot_required=True),
        "odin": HostTally(
            ok=3,
            failed=1,
            network_change_staged=True,
            model_storage="/mnt/nvme on /dev/nvme1n1: 812.3 GiB free of 1863.0 GiB",
        ),
    }
    assert progress.failures == ["odin: host_base : Create the aiinfra user: useradd: group 'x' does not exist"]


def test_a_log_gets_one_line_per_task_and_each_failure():
    out = io.StringIO()
    feed(Progress(out=out))
    assert out.getvalue().splitlines() == [
        "  task 1: host_base : Install the base packages",
        "  task 2: host_base : Create the aiinfra user",
        "FAILED odin: host_base : Create the aiinfra user: useradd: group 'x' does not exist",
        "  task 3: host_reboot : Report whether a reboot is still pending",
        "  task 4: network_vlans : Tell the run summary",
        "  task 5: model_storage : Report it (the run summary shows it)",
    ]


def test_a_terminal_gets_one_rewritten_line_with_counts():
    out = io.StringIO()
    feed(Progress(out=out, live=lambda: True))
    text = out.getvalue()
    frames = [f for f in text.split("\r\x1b[2K") if f]
    assert frames[-1].startswith("[  5] model_storage : Report it (the run summary shows it)")
    assert frames[-1].endswith("ok=5 changed=1 failed=1")
    assert "FAILED odin: host_base : Create the aiinfra user: useradd: group 'x' does not exist\n" in frames


def test_exit_codes_rank_unreachable_over_failed():
    def summary(**tallies: HostTally) -> RunSummary:
        return RunSummary(hosts=tallies, failures=[], duration_s=1.0, run_dir="/tmp/x", check=False, rc=0)

    assert summary(thor=HostTally(ok=3)).exit_code == EXIT_OK
    assert summary(thor=HostTally(failed=1)).exit_code == EXIT_FAILED
    assert summary(thor=HostTally(failed=1), odin=HostTally(unreachable=1)).exit_code == EXIT_UNREACHABLE
    assert summary(thor=HostTally(ok=3)).as_dict()["reboot_required"] == []
    assert summary(thor=HostTally(network_change_staged=True)).as_dict()["network_change_staged"] == ["thor"]


def test_models_are_counted_by_source_and_the_agent_reported():
    progress = Progress(out=None)
    for event in (
        result("runner_on_ok", "thor", ansible_stats={"data": {"aiinfra_models_vllm": ["mirror"] * 2 + ["present"]}}),
        result("runner_on_ok", "thor", ansible_stats={"data": {"aiinfra_models_ollama": ["download"]}}),
        result("runner_on_ok", "thor", ansible_stats={"data": {"aiinfra_agent_ready": "profile fast: a, b ready"}}),
    ):
        progress(event)
    assert progress.tally["thor"].models == {"mirror": 2, "present": 1, "download": 1}
    assert progress.tally["thor"].agent == "profile fast: a, b ready"


def test_the_summary_names_the_slowest_tasks_summed_over_hosts():
    progress = Progress(out=None)
    for event in (
        task("Install the base packages"),
        {"event": "runner_on_ok", "event_data": {"host": "thor", "res": {}, "duration": 4.0}},
        {"event": "runner_on_ok", "event_data": {"host": "odin", "res": {}, "duration": 3.0}},
        task("Write the kernel settings"),
        {"event": "runner_on_ok", "event_data": {"host": "thor", "res": {}, "duration": 0.5}},
        task("Install vLLM", role="vllm"),
        {"event": "runner_on_skipped", "event_data": {"host": "thor", "res": {}, "duration": 0.01}},
    ):
        progress(event)
    assert progress.slowest(2) == [
        ("host_base : Install the base packages", 7.0),
        ("host_base : Write the kernel settings", 0.5),
    ]
