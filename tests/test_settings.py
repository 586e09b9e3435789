"""Each setting declared once: every flag of every command maps to exactly one settings field, with
that field's default, and config files reach the same fields."""

from __future__ import annotations

import argparse
import dataclasses
import functools
from pathlib import Path

import pytest

from pretune import cli
from pretune.data.settings import MaskingSettings
from pretune.errors import PretuneError
from pretune.settings import options, settings_from
from pretune.train.settings import FinetuneSettings, PretrainSettings


def _parsers(parser: argparse.ArgumentParser, name: str = "pretune"):
    """Every leaf (sub-)command parser, with its name."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield name, parser
        return
    for sub_name, sub in subs[0].choices.items():
        yield from _parsers(sub, f"{name} {sub_name}")


LEAVES = dict(_parsers(cli.build_parser()))


def test_every_command_is_generated_from_settings() -> None:
    assert {"pretune pretrain", "pretune finetune", "pretune evaluate", "pretune predict", "pretune embed",
            "pretune convert", "pretune demo", "pretune tokenizer train", "pretune tokenizer encode",
            "pretune data download", "pretune data list", "pretune data where"} <= set(LEAVES)
    for name, parser in LEAVES.items():
        assert "_settings" in parser._defaults, f"{name} does not build its flags from a settings class"


@pytest.mark.parametrize("name", sorted(LEAVES))
def test_each_flag_maps_to_exactly_one_field_with_one_default(name: str) -> None:
    parser = LEAVES[name]
    cls, instance, opts = parser._defaults["_settings"]
    by_dest = {opt.dest: opt for opt in opts}
    assert len(by_dest) == len(opts), f"{name}: two flags for one field"
    flags = [a for a in parser._actions if a.dest not in ("help", "config")]
    assert sorted(a.dest for a in flags) == sorted(by_dest), f"{name}: a flag without a field, or a field without a flag"
    seen_flags = set()
    # the defaults as the dataclass itself makes them (its fields' defaults and factories, nested
    # settings with the defaults the outer class gives them), with no argparse involved
    own = instance if instance is not None else cls()
    built = settings_from(parser.parse_args([]))
    for action in flags:
        opt = by_dest[action.dest]
        assert action.default is argparse.SUPPRESS  # the field's default applies, nowhere else declared
        for flag in action.option_strings:
            assert flag not in seen_flags
            seen_flags.add(flag)
        expected = functools.reduce(getattr, opt.path, own)
        # an empty command line gives the dataclass's own default ...
        assert functools.reduce(getattr, opt.path, built) == expected, f"{name} {action.option_strings}"
        # ... and --help shows that default (an empty one, or a switch's, is described in words if at all)
        if expected not in (None, "", [], {}) and not isinstance(expected, bool):
            shown = " ".join(map(str, expected)) if isinstance(expected, list) else str(expected)
            assert (action.help or "").endswith(f"(default: {shown})"), f"{name} {action.option_strings}: {action.help}"


def test_dupe_factor_has_one_default_everywhere() -> None:
    from pretune.data.pretraining import BertInstanceConfig

    pretrain_opts = {o.flag: o for o in options(PretrainSettings)}
    default = pretrain_opts["--dupe-factor"].default
    assert default == MaskingSettings().dupe_factor == BertInstanceConfig(seq_len=128).dupe_factor
    assert "dupe_factor" not in {f.name for f in dataclasses.fields(PretrainSettings)}  # not declared twice


def test_nested_defaults_differ_per_command_but_live_in_one_field() -> None:
    pre = {o.flag: o.default for o in options(PretrainSettings)}
    fine = {o.flag: o.default for o in options(FinetuneSettings)}
    assert pre["--lr"] == 1e-4 and fine["--lr"] == 5e-5  # the command's instance of TrainSettings
    assert "--warmup-steps" in pre and "--warmup-steps" not in fine  # fine-tuning sets it from --warmup-ratio
    assert {o.path for o in options(FinetuneSettings) if o.flag == "--lr"} == {("trainer", "lr")}


def test_config_file_and_command_line_reach_the_same_fields(tmp_path: Path) -> None:
    parser = LEAVES["pretune finetune"]
    cfg = tmp_path / "run.yaml"
    cfg.write_text("lr: 0.001\nmax-seq-len: 32\nno_header: true\nset: [dropout=0.3]\nseed: 7\n", encoding="utf-8")
    s = settings_from(parser.parse_args(["--config", str(cfg), "--seed", "9"]))
    assert s.trainer.lr == 0.001 and s.max_seq_len == 32 and s.columns.header is False
    assert s.overrides == {"dropout": 0.3} and s.trainer.seed == 9  # the command line wins
    cfg.write_text("learning_rate: 0.1\n", encoding="utf-8")
    with pytest.raises(PretuneError, match="unknown setting 'learning_rate'"):
        settings_from(parser.parse_args(["--config", str(cfg)]))
    cfg.write_text("epochs: many\n", encoding="utf-8")
    with pytest.raises(PretuneError, match="epochs must be float"):
        settings_from(parser.parse_args(["--config", str(cfg)]))
    cfg.write_text("precision: fp16\n", encoding="utf-8")
    with pytest.raises(PretuneError, match="precision must be one of auto, fp32, bf16"):
        settings_from(parser.parse_args(["--config", str(cfg)]))
