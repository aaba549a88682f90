"""Every Redis script declares the keys it touches, so the scripts also run on Redis Cluster."""

from __future__ import annotations

import re
from importlib.resources import files

_CALL = re.compile(r"redis\.p?call\(\s*'(\w+)'\s*(?:,\s*([^,)]+))?")


_KEYLESS = {"TIME"}


def test_every_script_touches_only_declared_keys() -> None:
    """Redis Cluster routes a script by KEYS: a key built inside it may live on another node."""
    scripts = sorted(
        (
            p
            for part in ("relay.queue", "relay.limiter")
            for p in files(part).joinpath("lua").iterdir()
            if p.name.endswith(".lua")
        ),
        key=lambda p: p.name,
    )
    assert len(scripts) == 13
    for script in scripts:
        for command, first in _CALL.findall(script.read_text()):
            if command.upper() in _KEYLESS:
                continue
            assert first.strip().startswith("KEYS["), f"{script.name}: {command} {first}"
