"""The router's keys file: every way it can be wrong keeps the last good keys and names the problem."""

from __future__ import annotations

import json
import os

import pytest

from aiinfra.agent.http import keys


def good_file(path):
    token = keys.add(path, "alice", [], None, None)
    return token


@pytest.mark.parametrize(
    ("content", "mode", "says"),
    [
        ("garbage", 0o600, "not a keys file (JSONDecodeError"),
        ('{"keys": [{"name": "alice", "sha', 0o600, "not a keys file"),
        ('{"keys": [{"name": "alice", "sha256": 7, "hint": "x"}]}', 0o600, "wrong type"),
        ('{"keys": "alice"}', 0o600, "not a keys file"),
        ('{"keys": [{"name": "alice", "sha256": "%s", "hint": "x", "admin": true}]}' % ("0" * 64), 0o600, "admin"),
        (None, 0o666, "writable by others (mode 666)"),
        (
            json.dumps(
                {
                    "keys": [
                        {"name": "bob", "sha256": "0" * 64, "hint": "x"},
                        {"name": "bob", "sha256": "1" * 64, "hint": "y"},
                    ]
                }
            ),
            0o600,
            "names key 'bob' twice",
        ),
        ('{"keys": [{"name": "bob\\n", "sha256": "%s", "hint": "x"}]}' % ("0" * 64), 0o600, "wrong type"),
    ],
)
def test_a_bad_keys_file_keeps_the_last_good_keys(tmp_path, content, mode, says):
    path = tmp_path / "keys.json"
    token = good_file(path)
    ring = keys.KeyRing(path)
    assert ring.lookup(token).name == "alice" and ring.problem is None
    if content is not None:
        path.write_text(content)
    os.chmod(path, mode)
    os.utime(path, ns=(1, 1))  # a new stamp, whatever the clock's resolution
    assert ring.lookup(token).name == "alice"
    assert says in ring.problem and str(path) in ring.problem
    assert ring.health()["keys"] == 1


def test_with_no_good_keys_ever_nothing_is_let_in(tmp_path):
    path = tmp_path / "keys.json"
    path.write_text("garbage")
    ring = keys.KeyRing(path)
    assert ring.lookup("aiinfra-anything") is None
    assert ring.health() == {"file": str(path), "keys": 0, "problem": ring.problem}
    path.write_text(json.dumps({"keys": []}))
    os.utime(path, ns=(2, 2))
    assert ring.lookup("x") is None and ring.problem is None
