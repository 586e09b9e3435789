"""The task families pretune knows: adding a family is one module and one line here."""

from __future__ import annotations

from pretune.errors import PretuneError
from pretune.tasks.base import TaskFamily
from pretune.tasks.choice import MultipleChoice
from pretune.tasks.classification import Classification, Regression
from pretune.tasks.qa import QuestionAnswering
from pretune.tasks.tagging import Tagging

FAMILIES: dict[str, TaskFamily] = {
    f.name: f for f in (Classification(), Regression(), MultipleChoice(), QuestionAnswering(), Tagging())
}


def get_family(name: str) -> TaskFamily:
    """The family registered under ``name``."""
    if name not in FAMILIES:
        raise PretuneError(f"unknown task family {name!r}; choose one of {', '.join(FAMILIES)}")
    return FAMILIES[name]


__all__ = ["FAMILIES", "get_family"]
