"""A bad config fails at start with a message naming the key."""

import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from rl.config import TrainConfig, register_configs, to_train_config

CONFIGS = str(Path(__file__).resolve().parents[1] / "configs")
register_configs()


def composed(*overrides):
    with initialize_config_dir(config_dir=CONFIGS, version_base=None):
        return compose(config_name="config", overrides=list(overrides))


def test_default_config_is_typed():
    cfg = to_train_config(composed())
    assert isinstance(cfg, TrainConfig)
    assert cfg.experiment == "cpu_demo" and cfg.algo.critic_updates == 2 and cfg.algo.gamma == 1.0


def test_quick_preset_overrides():
    cfg = to_train_config(composed("experiment=quick"))
    assert cfg.experiment == "quick" and cfg.steps < to_train_config(composed()).steps


def test_unknown_key_is_named():
    with pytest.raises(ConfigCompositionException, match="not_a_key"):
        composed("algo.not_a_key=1")


def test_wrong_type_is_named():
    with pytest.raises((ValidationError, ConfigCompositionException), match="gamma"):
        composed("algo.gamma=fast")


def test_bad_choice_is_named():
    with pytest.raises(ValueError, match="algo.gae_mode"):
        to_train_config(composed("algo.gae_mode=weird"))


def test_cli_fails_at_start_naming_the_key(tmp_path):
    exe = Path(sys.executable).with_name("horizonrl-train")
    proc = subprocess.run([str(exe), "rollout.bogus_knob=3", f"hydra.run.dir={tmp_path}"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0
    assert "bogus_knob" in proc.stderr + proc.stdout
