"""The agent's HTTP surfaces: the OpenAI-compatible router (TCP, API keys), read-only status (TCP) and
control (a local unix socket)."""
