"""aiinfra's installer: the `aiinfra` command, the host spec, Ansible runs and the lab host."""
