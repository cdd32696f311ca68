"""``NAME=NUMBER`` options from the command line (``--loss-option``, ``--augment-option``)."""

from __future__ import annotations

from kshot.errors import KshotError


def parse_assignments(
    options: list[str], what: str, example: str, known: set[str] | None = None
) -> dict[str, float]:
    """``["margin=0.2", "neg-margin=1"]`` -> ``{"margin": 0.2, "neg_margin": 1.0}``; ``what``
    names the option in errors, ``example`` shows one that is right; names outside ``known``
    (if given) are refused."""
    parsed = {}
    for option in options:
        name, _, value = option.partition("=")
        if known is not None and name.strip().replace("-", "_") not in known:
            raise KshotError(f"unknown {what} {option!r}; known: {', '.join(sorted(known))}")
        try:
            parsed[name.strip().replace("-", "_")] = float(value)
        except ValueError:
            raise KshotError(
                f"{what} {option!r}: {value!r} is not a number; write NAME=NUMBER, e.g. {example}"
            ) from None
    return parsed
