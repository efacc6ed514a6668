"""Config loading: every shipped YAML loads; bad YAML fails with one line naming file, key and expected type."""

from __future__ import annotations

from pathlib import Path

import pytest

from takd import config as cfglib
from takd.config import ConfigError
from takd.paths import CONFIG_DIR
from takd.train.config import from_mapping, load_stage, stage_config


def _one_line(err: Exception) -> str:
    text = str(err)
    assert "\n" not in text, text
    return text


@pytest.mark.parametrize("method", ["sft", "kd", "seqkd", "minillm"])
def test_every_method_config_loads_with_reference_values(method, tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text(f"method: {method}\nteacher: tiny-l\n")
    cfg = load_stage(f)
    assert cfg.method == method
    if method == "minillm":  # reference §4 values
        m = cfg.minillm
        assert (m.alpha, m.gamma, m.clip, m.ppo_epochs, m.num_rollouts, m.kd_ratio) == (
            0.2, 0.95, 0.2, 4, 256, 0.5)
        assert cfg.optim.lr == 5e-6 and cfg.optim.warmup_steps == 100 and cfg.optim.schedule == "constant"
        assert (cfg.optim.beta1, cfg.optim.beta2, cfg.optim.weight_decay) == (0.9, 0.95, 1e-6)
    if method in ("kd", "seqkd"):
        assert cfg.kd.kd_ratio == 0.5 and cfg.kd.divergence == "fkl"


def test_every_yaml_under_configs_parses():
    files = sorted(CONFIG_DIR.rglob("*.yaml"))
    assert len(files) >= 8
    for f in files:
        assert isinstance(cfglib.read_yaml(f), dict), f


def test_wrong_type_names_file_key_and_type(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("method: sft\noptim:\n  lr: fast\n")
    with pytest.raises(ConfigError) as e:
        load_stage(f)
    msg = _one_line(e.value)
    assert str(f) in msg and "optim.lr" in msg and "expected float" in msg


def test_unknown_key_lists_allowed(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("method: sft\nmax_stepz: 3\n")
    with pytest.raises(ConfigError) as e:
        load_stage(f)
    msg = _one_line(e.value)
    assert "max_stepz" in msg and "max_steps" in msg and str(f) in msg


def test_syntax_error_is_one_line_with_line_number(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("method: sft\noptim: {lr: 1e-3\n")
    with pytest.raises(ConfigError) as e:
        load_stage(f)
    msg = _one_line(e.value)
    assert "not valid YAML" in msg and "line" in msg


def test_range_checks_and_missing_teacher(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("method: kd\n")
    with pytest.raises(ConfigError, match="needs a teacher"):
        load_stage(f)
    f.write_text("method: minillm\nteacher: tiny-l\nminillm: {alpha: 1.5}\n")
    with pytest.raises(ConfigError, match="minillm.alpha must be in"):
        load_stage(f)


def test_overrides_take_precedence_and_parse_types(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("method: kd\nteacher: tiny-l\n")
    cfg = load_stage(f, ["optim.lr=1e-3", "kd.divergence=rkl", "max_steps=7", "tensorboard=false"])
    assert cfg.optim.lr == 1e-3 and cfg.kd.divergence == "rkl" and cfg.max_steps == 7 and cfg.tensorboard is False
    with pytest.raises(ConfigError, match="kd.divergence must be one of"):
        load_stage(f, ["kd.divergence=xyz"])
    with pytest.raises(ConfigError, match="expected key=value"):
        cfglib.apply_overrides({}, ["nonsense"])


def test_roundtrip_to_dict(tmp_path):
    cfg = stage_config("kd", teacher="tiny-l")
    again = from_mapping(cfglib.to_dict(cfg), "roundtrip")
    assert again == cfg


def test_missing_file_is_clear():
    with pytest.raises(ConfigError, match="no such config file"):
        cfglib.read_yaml(Path("/nonexistent/x.yaml"))


def test_a_partial_nested_section_keeps_the_methods_own_defaults():
    """`optim: {lr: ...}` for MiniLLM keeps the reference's MiniLLM optimiser (betas 0.9/0.95, weight decay 1e-6,
    reference §2b), not OptimConfig's SFT defaults; the same partial section for SFT keeps SFT's; and the planner's
    profile sections and --set overrides go through the same path."""
    from takd.chain.profiles import load_profile, profile_path, profile_stage

    mini = from_mapping({"method": "minillm", "student": "tiny-s", "teacher": "tiny-m", "optim": {"lr": 1e-4},
                         "minillm": {"sampling": {"top_k": 5}}}, "x")
    assert (mini.optim.lr, mini.optim.beta2, mini.optim.weight_decay, mini.optim.warmup_steps) == (1e-4, 0.95, 1e-6,
                                                                                                    100)
    assert (mini.minillm.sampling.top_k, mini.minillm.sampling.top_p) == (5, 1.0)
    sft = from_mapping({"method": "sft", "student": "tiny-s", "optim": {"lr": 1e-4}}, "x")
    assert (sft.optim.beta2, sft.optim.weight_decay) == (0.999, 0.01)
    profile = load_profile(profile_path("tiny"))
    written = profile.section("distill", "tiny-s")["optim"]  # the profile's partial optim: lr and warmup only
    assert set(written) == {"lr", "warmup_steps", "schedule"}
    tiny = profile_stage(profile, "distill", "minillm", "tiny-s", ["optim.eps=1e-6"], name="d", student="tiny-s",
                         teacher="tiny-m")
    assert (tiny.optim.lr, tiny.optim.warmup_steps, tiny.optim.beta2, tiny.optim.weight_decay, tiny.optim.eps) == \
        (written["lr"], written["warmup_steps"], 0.95, 1e-6, 1e-6)
