"""The `aiinfra` command's subcommands, one module per subject (cli.py puts them together)."""
