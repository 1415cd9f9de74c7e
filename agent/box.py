"""The box contract: every path, file and address the roles, the units and the agent share, named once.

These are the defaults. installer/variables.py declares the operator's variables with them (so the roles'
defaults, argument_specs and the README come from here); the systemd units are templates of those
variables; the agent's own defaults (a box configured by hand, a developer's machine) are these too.
"""

from __future__ import annotations

# aiinfra itself: a virtual environment whose bin/ holds aiinfra-agent (role aiinfra_package).
PREFIX = "/opt/aiinfra"
CONFIG_FILE = "/etc/aiinfra/agent.yml"  # role aiinfra_agent; the agent's --config
GPU_SETTINGS_FILE = "/etc/aiinfra/gpu.yml"  # role gpu_tuning; the boot unit and the agent read it
KEYS_FILE = "/etc/aiinfra/keys.json"  # the router's keys, hashes only
STATE_DIR = "/run/aiinfra"  # the agent unit's RuntimeDirectory: engine launch files, the control socket
CONTROL_SOCKET = f"{STATE_DIR}/control.sock"

USER = "aiinfra"  # engines run as this user
GROUP = "aiinfra"
OPERATORS_GROUP = "aiinfra-operators"  # may use the control socket; the engines' user is never in it

MODEL_STORAGE_MOUNT = "/mnt/nvme"  # role model_storage
# The folders under it (model_storage_dirs): a use, and its folder.
MODEL_DIRS = {"models": "models", "ollama": "ollama", "hf_cache": "hf-cache", "qdrant": "qdrant"}

VLLM_PREFIX = "/opt/vllm"  # role vllm: one environment per version, current/ the one in use
VLLM_COMMAND = [f"{VLLM_PREFIX}/current/bin/vllm"]
OLLAMA_COMMAND = ["/usr/local/bin/ollama"]  # role ollama links its release there

ROUTER_LISTEN = "0.0.0.0:8000"  # the OpenAI-compatible endpoint
STATUS_LISTEN = "127.0.0.1:8079"  # read-only status: /healthz, /status, /metrics
PEER_PORT = 8078  # an engine across boxes: each node's agent tells the others its ranks, on the trusted network


# The agent's records, root's alone (0700): the energy ledger, the audit log, the engines' restart counts.
# On the model disk, which a rebuild (fresh OS, same inventory) finds again by its label, as it does the
# models; not the engines' home, which root without CAP_DAC_OVERRIDE cannot write.
DATA_DIR_NAME = "aiinfra-agent"
DATA_DIR = f"{MODEL_STORAGE_MOUNT}/{DATA_DIR_NAME}"
AUDIT_LOG = "audit.log"  # under DATA_DIR


def model_dir(mount: str, use: str) -> str:
    """Where the default layout puts the folder for a use (models, ollama, hf_cache) under a mount."""
    return f"{mount.rstrip('/')}/{MODEL_DIRS[use]}"
