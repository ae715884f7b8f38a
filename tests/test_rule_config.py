"""A rule as a LightningCLI object: short names, class paths with options, YAML, checkpoints that load weights-only,
and the optimizer's checkpoint format."""

from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_cli_args
from zolightning.cli.main import main
from zolightning.modules import ZOFineTuneModule
from zolightning.optim import ZOAdam, ZOOptimizer, ZOSGDMomentum, resolve_rule


def _fit(tmp_path, data_dir, monkeypatch, *extra) -> Path:
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    main(["fit", *tiny_cli_args(tmp_path, data_dir, "--trainer.max_steps", "2", *extra)])
    return tmp_path / "tiny-sst2-mezo" / "version_0" / "checkpoints" / "last.ckpt"


def test_a_rule_with_options_from_the_command_line_trains_and_resumes_from_its_checkpoint(tmp_path, data_dir,
                                                                                           monkeypatch):  # fmt: skip
    rule = ["--model.optimizer", "ZOAdam", "--model.optimizer.betas", "[0.8,0.9]", "--model.queries", "2"]
    ckpt = _fit(tmp_path, data_dir, monkeypatch, *rule)
    saved = torch.load(ckpt, weights_only=True)  # the rule is plain values in the checkpoint
    spec = saved["hyper_parameters"]["optimizer"]
    assert spec == {"class_path": "zolightning.optim.rules.adam.ZOAdam", "init_args": {"betas": (0.8, 0.9),
                                                                                        "adam_eps": 1e-8}}  # fmt: skip
    assert saved["optimizer_states"][0]["param_groups"][0]["betas"] == (0.8, 0.9)
    assert saved["optimizer_states"][0]["zo"]["queries"] == 2
    module = ZOFineTuneModule.load_from_checkpoint(ckpt, weights_only=True)
    assert module.rule == ZOAdam(betas=(0.8, 0.9))


def test_a_yaml_config_names_the_rule_by_class_path(tmp_path, data_dir, monkeypatch):
    config = tmp_path / "rule.yaml"
    config.write_text("model:\n  optimizer:\n    class_path: zolightning.optim.rules.ZOSGDMomentum\n"
                      "    init_args:\n      momentum: 0.5\n")  # fmt: skip
    ckpt = _fit(tmp_path, data_dir, monkeypatch, "--config", str(config))
    saved = torch.load(ckpt, weights_only=True)
    assert saved["optimizer_states"][0]["param_groups"][0]["momentum"] == 0.5
    assert ZOFineTuneModule.load_from_checkpoint(ckpt, weights_only=True).rule == ZOSGDMomentum(0.5)


def test_an_unknown_rule_is_refused_with_the_known_ones_named():
    with pytest.raises(ValueError, match="zo_sgd_momentum"):
        resolve_rule("zo_sdg")
    with pytest.raises(ValueError, match="ZORule class path"):
        resolve_rule("torch.optim.SGD")


def test_optimizer_states_of_before_the_format_number_load_and_a_later_format_is_refused():
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = ZOOptimizer([weight], lr=1e-2, seed=4)
    optimizer.step(lambda: (weight**2).sum())
    state = optimizer.state_dict()
    del state["zo"]["format"], state["zo"]["queries"]  # what the code before #30 wrote for zo_sgd
    resumed = ZOOptimizer([weight], lr=1e-2, seed=9)
    resumed.load_state_dict(state)
    assert resumed.num_steps == 1 and resumed.seed == 4
    state["zo"]["format"] = 2
    with pytest.raises(ValueError, match="format 2"):
        ZOOptimizer([weight], lr=1e-2).load_state_dict(state)
