"""The relay's Redis scripts, one ``.lua`` file each.

Every script declares the keys it touches (``KEYS``), so they run on Redis Cluster too (all keys
share one hash tag). Scripts that write are ordered so they also run on a full Redis: see the
note in ``take_batch.lua``.
"""

from __future__ import annotations

from importlib.resources import files


def source(name: str) -> str:
    """The text of the script ``name`` (e.g. ``"take_batch.lua"``)."""
    return files(__name__).joinpath(name).read_text()
