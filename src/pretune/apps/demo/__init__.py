"""``pretune demo``, the main job: pretraining on unlabeled Korean reviews against training from
scratch, built only from the library's public parts (see ``run.py``)."""

from pretune.apps.demo.settings import DemoSettings, epochs_for
from pretune.apps.demo.stages import demo_precision, finetune_best_lr, finetune_stage

__all__ = ["DemoSettings", "demo_precision", "epochs_for", "finetune_best_lr", "finetune_stage", "run_demo"]


def __getattr__(name: str):  # run_demo imports torch: only when asked for
    if name == "run_demo":
        from pretune.apps.demo.run import run_demo

        return run_demo
    raise AttributeError(name)
