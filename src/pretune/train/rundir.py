"""The run directory of ``pretrain`` and ``finetune`` (``--out``): who may start in it, what
``--overwrite`` clears, which checkpoint ``--resume`` continues from, and which settings may differ
when it does.

A run directory holds one run: its checkpoints (``checkpoints/step-N``, each renamed into place
only once complete, so a save killed half-way leaves a hidden temporary that is never picked and
is removed on the next start), its log, and the model it produces. Starting again in it needs
``--resume`` (continue from the newest complete checkpoint, with the same settings but for those
that do not change the run's results) or ``--overwrite`` (clear it first; pretraining's token
cache ``data-cache/`` is kept, it depends only on the corpus and the tokenizer).
"""

from __future__ import annotations

import re
import shutil
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pretune.config import read_json
from pretune.errors import PretuneError
from pretune.io import check_out
from pretune.settings import options, to_dict

CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"
STATE_FILE = "trainer_state.pt"
WEIGHTS_FILE = "model.safetensors"
SETTINGS_FILE = "settings.json"  # in each checkpoint: the command's settings, for the --resume check
KEEP = ("data-cache",)
_STEP = re.compile(r"step-(\d+)")


def checkpoint_dirs(out_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (a checkpoint directory only appears once complete;
    the hidden temporaries of an interrupted save never match)."""
    root = Path(out_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _STEP.fullmatch(p.name) and p.is_dir()
             and (p / STATE_FILE).is_file() and (p / WEIGHTS_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def remove_temporaries(out_dir: str | Path) -> None:
    """Delete what saves killed half-way left in ``checkpoints/`` (hidden ``.step-N.*`` directories)."""
    root = Path(out_dir) / CHECKPOINTS
    if root.is_dir():
        for p in root.glob(".step-*"):
            shutil.rmtree(p, ignore_errors=True)


def holds_run(out: Path) -> bool:
    return out.is_dir() and any(p.name not in KEEP for p in out.iterdir())


def clear(out: Path) -> None:
    """``--overwrite``: remove the old run's checkpoints, logs, results and model (not the token cache)."""
    for p in out.iterdir():
        if p.name in KEEP:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def prepare_out(settings: Any, *, inputs: Iterable[str | Path | None] = (), clear_now: bool = True) -> Path | None:
    """Check ``settings.out`` before any work: refuse to start over a run without ``--resume`` or
    ``--overwrite`` (and clear it with ``--overwrite``, or leave that to the caller's
    :func:`clear_for_overwrite` with ``clear_now=False``, for checks that come later); with
    ``--resume``, return the checkpoint to continue from after checking that the settings allow it.
    Rank 0 calls it (see ``on_main``)."""
    run = settings.trainer
    out = Path(settings.out)
    if run.resume and run.overwrite:
        raise PretuneError("--resume and --overwrite contradict each other; pass one of them")
    check_out(out, inputs=tuple(p for p in inputs if p is not None and Path(p).exists()), overwrite=True)
    found = checkpoint_dirs(out)
    if run.resume:
        if not found:
            raise PretuneError(f"--resume: {out} holds no complete checkpoint ({CHECKPOINTS}/step-N) to continue from; "
                               "start afresh with --overwrite instead")
        check_resume(found[-1], settings)
        return found[-1]
    if holds_run(out):
        if not run.overwrite:
            what = f"a run (newest checkpoint {found[-1].name})" if found else "files"
            raise PretuneError(f"--out {out}: holds {what}; pass --resume to continue it, --overwrite to start afresh "
                               "(its checkpoints and logs are deleted), or choose another directory")
        if clear_now:
            clear(out)
    return None


def clear_for_overwrite(settings: Any) -> None:
    """``--overwrite`` after ``prepare_out(..., clear_now=False)``: clear the old run now."""
    out = Path(settings.out)
    if settings.trainer.overwrite and not settings.trainer.resume and holds_run(out):
        clear(out)


# --- what may change on --resume ---------------------------------------------------------------


def may_change(cls: type) -> list[str]:
    """The flags of ``cls`` whose value may differ on ``--resume`` (``resume_may_change`` of each
    settings class: more steps, logging, where it runs; nothing that changes the run's results)."""
    return [opt.flag for opt in options(cls) if _allowed(cls, opt.path)]


def _allowed(cls: type, path: tuple[str, ...]) -> bool:
    owner = cls
    for name in path[:-1]:
        owner = typing.get_type_hints(owner)[name]
    return path[-1] in getattr(owner, "resume_may_change", ())


def saved_settings(settings: Any, world_size: int) -> dict[str, Any]:
    """What a checkpoint records of the run's settings (:data:`SETTINGS_FILE`)."""
    return {"command": type(settings).__name__, "settings": to_dict(settings), "world_size": world_size}


def check_resume(checkpoint: Path, settings: Any) -> None:
    """Refuse to resume with settings that change the run's results, naming each changed one."""
    path = checkpoint / SETTINGS_FILE
    if not path.is_file():
        return  # a checkpoint of a Trainer used directly: nothing recorded to compare
    saved = read_json(path)
    cls = type(settings)
    if saved.get("command") != cls.__name__:
        raise PretuneError(f"--resume: {checkpoint} belongs to a {saved.get('command')} run, not {cls.__name__}")
    old, new = _flat(saved["settings"]), _flat(to_dict(settings))
    changed = [f"{opt.flag} {_shown(opt, old.get(opt.dest))} -> {_shown(opt, new.get(opt.dest))}" for opt in options(cls)
               if opt.dest != "out" and not _allowed(cls, opt.path) and _norm(old.get(opt.dest)) != _norm(new.get(opt.dest))]
    if changed:
        raise PretuneError(
            f"--resume: {checkpoint.parent.parent} was run with other settings, and these change its results: "
            f"{', '.join(changed)}; resume with the run's own, or start afresh with --overwrite "
            f"(only {', '.join(may_change(cls))} may change)"
        )


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and key != "overrides":  # --set values compare as one setting
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _shown(opt: Any, value: Any) -> str:
    """A value as the command line gives it: a switch is on or off (``--no-nsp`` is on when nsp is False)."""
    if isinstance(value, bool):
        return "on" if value != bool(opt.field.metadata.get("negate")) else "off"
    return repr(value)


def _norm(value: Any) -> Any:
    """Paths compared by what they name (``data/x.txt`` and ``/abs/data/x.txt`` are the same file)."""
    if isinstance(value, list):
        return [_norm(v) for v in value]
    if isinstance(value, str) and ("/" in value or Path(value).exists()):
        return str(Path(value).resolve())
    return value


__all__ = [
    "CHECKPOINTS", "METRICS", "SETTINGS_FILE", "STATE_FILE", "WEIGHTS_FILE", "check_resume", "checkpoint_dirs",
    "clear", "clear_for_overwrite", "holds_run", "may_change", "prepare_out", "remove_temporaries", "saved_settings",
]
