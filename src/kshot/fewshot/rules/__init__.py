"""Decision rules by name: ``make_rule("logistic")``. See ``base.py`` for the family's contract."""

from __future__ import annotations

from kshot.fewshot.rules.base import DecisionRule
from kshot.fewshot.rules.knn import KNNRule
from kshot.fewshot.rules.logistic import LogisticRule
from kshot.fewshot.rules.prototype import PrototypeRule

RULES: dict[str, type[DecisionRule]] = {
    rule.name: rule for rule in (PrototypeRule, KNNRule, LogisticRule)
}
METHODS = tuple(RULES)


def make_rule(name: str, neighbours: int = 10) -> DecisionRule:
    """A new, unfitted rule ``name``; ``neighbours`` is kNN's k."""
    if name not in RULES:
        raise ValueError(f"unknown method {name!r}: use one of {', '.join(METHODS)}")
    return KNNRule(neighbours) if name == "knn" else RULES[name]()


__all__ = ["METHODS", "RULES", "DecisionRule", "make_rule"]
