"""Filter of the model_storage role: `blkid -o export` output as a mapping (TYPE, UUID, LABEL, PTTYPE…)."""

from __future__ import annotations


def blkid_export(lines: list[str]) -> dict[str, str]:
    found = {}
    for line in lines:
        key, sep, value = line.partition("=")
        if sep and key:
            found[key.strip()] = value.strip()
    return found


class FilterModule:
    def filters(self):
        return {"blkid_export": blkid_export}
