"""Class labels: any Unicode text a person would type, but one line of it."""

from __future__ import annotations

import unicodedata

GROUP_SEPARATOR = "/"  # "Tomato/Late blight": the class Late blight of the group Tomato
UNKNOWN = "unknown"  # the answer when nothing is similar enough; so it cannot be a class
MAX_LABEL_LENGTH = 200
_CONTROL_NAMES = {"\t": "a tab", "\n": "a newline", "\r": "a carriage return"}
# Refused: control characters (Cc), surrogates (Cs), line and paragraph separators (Zl, Zp), and
# the bidirectional embeddings, overrides and isolates, which reorder the text around a label.
# Other format characters stay allowed: zero-width joiners build emoji and Indic and Persian words.
_REFUSED_CATEGORIES = {"Cc", "Cs", "Zl", "Zp"}
_BIDI_CONTROLS = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def check_label(label: str) -> str:
    """``label`` in Unicode NFC form, or ``ValueError`` saying why it cannot be a class label.

    Tabs, newlines, other control characters and line separators are refused: they break every
    line-based format a label ends up in (terminal tables, TSV metadata, CSV files). A ``/``
    separates a group from its class (``Tomato/Late blight``): two levels at most, neither empty.
    """
    label = unicodedata.normalize("NFC", label)
    if not label.strip():
        raise ValueError("label is empty")
    if label != label.strip():
        raise ValueError(f"label {label!r} starts or ends with white space")
    for char in label:
        if unicodedata.category(char) in _REFUSED_CATEGORIES or char in _BIDI_CONTROLS:
            name = _CONTROL_NAMES.get(char, f"control character U+{ord(char):04X}")
            raise ValueError(f"label {label!r} contains {name}")
    if label.casefold() == UNKNOWN:
        raise ValueError(f"label {label!r} is reserved for queries that match no class")
    if len(label) > MAX_LABEL_LENGTH:
        raise ValueError(f"label is longer than {MAX_LABEL_LENGTH} characters")
    parts = label.split(GROUP_SEPARATOR)
    if len(parts) > 2:
        raise ValueError(
            f"label {label!r} has {len(parts)} levels; at most two, as group/class "
            "(e.g. Tomato/Late blight)"
        )
    if any(part != part.strip() or not part for part in parts):
        raise ValueError(
            f"label {label!r} has an empty group or class, or one that starts or ends with white "
            "space; write group/class, e.g. Tomato/Late blight"
        )
    if any(part.casefold() == UNKNOWN for part in parts):
        raise ValueError(
            f"label {label!r}: {UNKNOWN!r} is reserved for queries that match no class"
        )
    return label
