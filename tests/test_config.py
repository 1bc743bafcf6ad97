"""A bad config fails at start with a message naming the key."""

import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from opd.config import register_configs as register_distill_configs, to_distill_config
from rl.config import TrainConfig, register_configs, to_train_config

CONFIGS = str(Path(__file__).resolve().parents[1] / "configs")
register_configs()
register_distill_configs()


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


@pytest.mark.parametrize("override, key", [("sft.demo_accuracy=1.5", "sft.demo_accuracy"),
                                           ("sft.demo_indent_kept=-0.1", "sft.demo_indent_kept"),
                                           ("sft.demo_retry=1.5", "sft.demo_retry"),
                                           ("sft.task_fraction=0", "sft.task_fraction"),
                                           ("sft.lr_decay=linear", "sft.lr_decay"),
                                           ("sft.min_lr_ratio=2", "sft.min_lr_ratio"),
                                           ("algo.policy_lr_decay=step", "algo.policy_lr_decay"),
                                           ("algo.policy_min_lr_ratio=-1", "algo.policy_min_lr_ratio"),
                                           ("algo.policy_mini_batches=0", "algo.policy_mini_batches"),
                                           ("algo.policy_mini_batches=33", "rollout.episodes_per_step"),
                                           ("eval.samples_per_task=2", "eval.samples_per_task"),   # greedy: 1
                                           ("eval.greedy=false", "eval.sampled_samples_per_task"),
                                           ("eval.sampled_samples_per_task=-1", "sampled_samples_per_task")])
def test_out_of_range_sft_values_are_named(override, key):
    with pytest.raises(ValueError, match=key):
        to_train_config(composed(override))


def test_cli_fails_at_start_naming_the_key(tmp_path):
    exe = Path(sys.executable).with_name("horizonrl-train")
    proc = subprocess.run([str(exe), "rollout.bogus_knob=3", f"hydra.run.dir={tmp_path}"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0
    assert "bogus_knob" in proc.stderr + proc.stdout


PRESET_REQUIRED = {"sglang_qwen7b": ["model.path=/ckpt/qwen"], "hack_demo": ["model.path=/ckpt/sft"],
                   "swe_qwen7b_docker": ["model.path=/ckpt/qwen", "suite.name=/data/swe.jsonl"]}


@pytest.mark.parametrize("preset", sorted(p.stem for p in (Path(CONFIGS) / "experiment").glob("*.yaml")
                                          if p.stem != "opd_demo"))   # opd_demo is horizonrl-distill's
def test_every_experiment_preset_composes_into_a_valid_config(preset):
    cfg = to_train_config(composed(f"experiment={preset}", *PRESET_REQUIRED.get(preset, [])))
    assert cfg.experiment == preset


def test_the_production_preset_is_what_its_comment_says():
    cfg = to_train_config(composed("experiment=swe_qwen7b_docker", *PRESET_REQUIRED["swe_qwen7b_docker"]))
    assert (cfg.engine.type, cfg.env.backend, cfg.orchestrator) == ("sglang", "docker", "async")
    assert (cfg.deepspeed.zero_stage, cfg.deepspeed.bf16, cfg.cluster.dp_ranks) == (3, True, 4)
    assert cfg.sglang.num_engines * cfg.sglang.tp_size + cfg.cluster.learner_gpus == 8
    assert cfg.env.docker.max_live >= 2 * cfg.rollout.max_concurrent_per_worker
    with pytest.raises(ValueError, match="experiment=swe_qwen7b_docker needs suite.name=..."):   # named
        to_train_config(composed("experiment=swe_qwen7b_docker", "model.path=/ckpt/qwen"))


def test_deepspeed_presets_and_offload_checks():
    cfg = to_train_config(composed("deepspeed=zero3_offload"))
    assert (cfg.deepspeed.zero_stage, cfg.deepspeed.offload_optimizer, cfg.deepspeed.offload_params) == (3, True, True)
    with pytest.raises(Exception, match="offload_params needs deepspeed.zero_stage = 3"):
        to_train_config(composed("deepspeed=zero3_offload", "deepspeed.zero_stage=2"))


def test_offload_between_phases_needs_shared_gpus_taking_turns():
    cfg = to_train_config(composed("cluster.offload_between_phases=true", "deepspeed.zero_stage=1"))
    assert cfg.cluster.offload_between_phases and cfg.cluster.placement == "colocated"
    for bad, named in ((["orchestrator=async"], "orchestrator=sync"),
                       (["cluster.placement=disaggregated"], "placement=colocated"),
                       (["deepspeed.zero_stage=0"], "zero_stage >= 1")):
        with pytest.raises(ValueError, match=named):
            to_train_config(composed("cluster.offload_between_phases=true", "deepspeed.zero_stage=1", *bad))


def test_distill_config_gets_the_training_schemas_checks_at_start():
    """horizonrl-distill composes its own tree; a setting the rollout/learner machinery refuses is
    named when the config is read, before any expert is trained."""
    with initialize_config_dir(config_dir=CONFIGS, version_base=None):
        good = compose(config_name="distill", overrides=["algo.policy_mini_batches=4"])
        bad = compose(config_name="distill", overrides=["algo.policy_mini_batches=17"])
    assert to_distill_config(good).algo.policy_mini_batches == 4
    with pytest.raises(ValueError, match="algo.policy_mini_batches = 17 needs rollout.episodes_per_step"):
        to_distill_config(bad)


def test_distill_with_sglang_teachers_needs_temperature_one():
    """SGLang's prompt log-probs are taken before any temperature: sglang teachers at the demo's
    temperature 0.5 would score another distribution than the student sampled, so the run is refused."""
    with initialize_config_dir(config_dir=CONFIGS, version_base=None):
        demo = compose(config_name="distill", overrides=["opd.teacher_engine=sglang"])
        at_one = compose(config_name="distill", overrides=["opd.teacher_engine=sglang", "sampling.temperature=1.0"])
        unknown = compose(config_name="distill", overrides=["opd.teacher_engine=vllm"])
    with pytest.raises(ValueError, match="sampling.temperature=0.5: set sampling.temperature=1.0 or opd.teacher_engine=hf"):
        to_distill_config(demo)
    assert to_distill_config(at_one).opd.teacher_engine == "sglang"
    with pytest.raises(ValueError, match="opd.teacher_engine"):
        to_distill_config(unknown)


def test_opd_demo_recipes_pin_their_demonstrators_against_the_default_preset():
    """The merge demo trains its base and experts with `horizonrl-train <recipe>`, i.e. on top of the
    default preset; the default's flush-left demonstrator (sft.demo_indent_kept=0.25) once leaked into
    the experts (held-out 0.04 / 0.17 instead of ~0.6). Each recipe, composed as horizonrl-train
    composes it, must give the demonstrator the recipe names: clean edits, no retries."""
    with initialize_config_dir(config_dir=CONFIGS, version_base=None):
        opd = to_distill_config(compose(config_name="distill")).opd
        recipes = {"base": opd.base.train, **{e.name: e.train for e in opd.experts}}
        cfgs = {name: to_train_config(compose(config_name="config", overrides=list(train)))
                for name, train in recipes.items()}
    sft = {name: c.sft for name, c in cfgs.items()}
    assert set(sft) == {"base", "arith_expert", "control_expert"}
    for name, s in sft.items():
        assert (s.demo_indent_kept, s.demo_retry, s.lr_decay) == (1.0, 0.0, "constant"), name
        assert cfgs[name].sampling.top_p == 1.0 and not cfgs[name].eval.greedy, name
    assert sft["base"].demo_accuracy == 0.25
    assert sft["arith_expert"].demo_accuracy == sft["control_expert"].demo_accuracy == 1.0
