"""Exit codes of both CLIs (`aiinfra` and `aiinfra-agent`), named once."""

EXIT_OK = 0
EXIT_FAILED = 1  # the work failed: a task on a host, a switch that did not come ready, a setting that did not stick
EXIT_BAD_INPUT = 2  # a bad spec, configuration, name or usage: nothing was changed
EXIT_UNREACHABLE = 3  # a host or an agent did not answer
EXIT_ENVIRONMENT = 4  # this machine lacks what the run needs (Ansible, playbooks, podman)
