"""The agent's HTTP surfaces: read-only status on TCP, control on a local unix socket."""
