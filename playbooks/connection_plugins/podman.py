"""The lab's connection to its hosts (systemd containers): containers.podman's, with pipelining.

Upstream's `podman exec` does not pass stdin, so Ansible must copy every module into the container,
chmod it and remove it again: three `podman exec` calls a task, and a `podman mount` besides.
Passing stdin (`exec -i`) lets a module travel on it, one call a task, as with SSH and pipelining on
a real box; the container is mounted only for a task that copies a file. `aiinfra install`, the
agent commands and Molecule find it here (ANSIBLE_CONNECTION_PLUGINS) under upstream's short name
`podman`, which is what molecule-plugins writes into its inventories.
"""

from __future__ import annotations

import shlex

from ansible.errors import AnsibleConnectionFailure
from ansible.module_utils.common.text.converters import to_native
from ansible.plugins.connection import ensure_connect
from ansible_collections.containers.podman.plugins.connection import podman as upstream

DOCUMENTATION = upstream.DOCUMENTATION.replace("short_description:", "short_description: (pipelined)", 1)


class Connection(upstream.Connection):
    transport = "podman"
    has_pipelining = True

    @ensure_connect
    def exec_command(self, cmd, in_data=None, sudoable=False):
        super(upstream.Connection, self).exec_command(cmd, in_data=in_data, sudoable=sudoable)
        args = ["exec", "-i"] if in_data is not None else ["exec"]
        if self.user:
            args += ["--user", self.user]
        rc, stdout, stderr = self._podman(args, shlex.split(to_native(cmd, errors="surrogate_or_strict")), in_data)
        # Without a temporary directory to make first, a pipelined module is the first thing to meet a
        # stopped or missing container: that host is unreachable, not its task failed.
        if rc != 0 and to_native(stderr).startswith("Error: ") and not self._running():
            raise AnsibleConnectionFailure(to_native(stderr).strip())
        return rc, stdout, stderr

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._mount_tried = False

    def _connect(self):
        # Upstream mounts the container at every task; only a file's copy reads the mount, so it waits
        # for one (a task that only runs a pipelined module is one `podman exec`, nothing more).
        self._connected = True
        return self

    def put_file(self, in_path, out_path):
        self._mount()
        super().put_file(in_path, out_path)

    def fetch_file(self, in_path, out_path):
        self._mount()
        super().fetch_file(in_path, out_path)

    def _mount(self) -> None:
        if not self._mount_tried:
            self._mount_tried = True
            upstream.Connection._connect(self)  # `podman mount`; without one, files go by `podman cp`

    def _running(self) -> bool:
        rc, out, _ = self._podman(["container", "inspect", "--format", "{{.State.Running}}"])
        return rc == 0 and to_native(out).strip() == "true"
