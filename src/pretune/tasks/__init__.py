"""Fine-tuning tasks, one module per family (see ``base.py`` for what a family provides).

* ``classification.py``: single sentences and pairs, classes (:class:`Classification`) or a
  score (:class:`Regression`)
* ``choice.py``: multiple choice, one sequence per answer
* ``qa.py``: extractive QA (SQuAD v1.1 JSON), BERT only
* ``tagging.py``: a tag per word (CoNLL files)

``recipes.py`` names the data sets (nsmc, kornli, korsts, cola, stsb, mrpc, storycloze, korquad)
as data; ``model.py`` is the body + head that fine-tuning trains; ``registry.py`` lists the
families.
"""

from pretune.tasks.base import FeatureSet, Predictions, TaskFamily, TaskSpec
from pretune.tasks.model import TaskHead, TaskModel, TaskOutput, head_state, new_parameter_prefixes
from pretune.tasks.recipes import RECIPES, Recipe, get_recipe, read_examples
from pretune.tasks.registry import FAMILIES, get_family

__all__ = [
    "FAMILIES", "RECIPES", "FeatureSet", "Predictions", "Recipe", "TaskFamily", "TaskHead", "TaskModel",
    "TaskOutput", "TaskSpec", "get_family", "get_recipe", "head_state", "new_parameter_prefixes", "read_examples",
]
