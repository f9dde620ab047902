"""Numbers as text: the one formatter of tables, reports and command output."""

from __future__ import annotations

__all__ = ["fmt_number"]


def fmt_number(value: float | None, digits: int = 2, missing: str = "-") -> str:
    """``value`` with ``digits`` decimals, or ``missing`` when there is none (``None``)."""
    return missing if value is None else f"{value:.{digits}f}"
