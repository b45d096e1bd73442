"""The data layer's one error type, and the message that says where data was looked for and how to fix it."""
from __future__ import annotations

# How users point the code at their data; repeated in every "data not found" error.
DATA_ROOT_HINT = (
    "pass --data-root DIR (or DATA=DIR for make) pointing at a folder that holds the data "
    "(the prepared arrays or the torchvision download, directly or in DIR/<name>), "
    "or run once with a network to download into DIR."
)


class DataError(Exception):
    """Data missing, malformed or inconsistent; the message names the file and what was expected."""


def not_found_error(title: str, looked_in: list[str], reason: str = "") -> DataError:
    """One error that lists every place searched and says how to fix it."""
    places = "\n".join(f"  - {place}" for place in looked_in)
    reason = f"\n{reason}" if reason else ""
    return DataError(f"{title} not found. Looked in:\n{places}{reason}\nTo fix: {DATA_ROOT_HINT}")
