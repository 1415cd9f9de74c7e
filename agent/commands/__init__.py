"""The box commands of `aiinfra-agent`, one module per group; agent/main.py adds them to the CLI."""
