"""OPD pieces with real Ray, real hf engine actors and tiny models: the reverse-KL advantage on a
hand-computed case, teacher scoring of the student's exact token ids, routing of every trajectory
to its own domain's teacher (through the real rollout source), the learner step, and the start-up
refusals (tokenizer / vocabulary mismatch, missing or corrupt checkpoints)."""

import math
import shutil

import pytest
import ray
import torch
from transformers import AutoModelForCausalLM, Qwen2Config

from antihack.guard import GuardConfig
from envs.solver import scripted_solution
from envs.suite import builtin_suite
from opd.advantages import (distillation_advantages, recovery, sampled_reverse_kl, task_advantage,
                            teacher_tensor, teacher_top_k)
from opd.config import DomainConfig, ExpertConfig, ModelSource, OPDConfig, check_opd
from opd.experts import ensure_model
from opd.learner import OPDLearner
from opd.offpolicy import (expert_episodes, offpolicy_batches, offpolicy_samples, offpolicy_step_count,
                           replay_batches)
from opd.source import DomainMixture, ScoredRolloutSource
from opd.teacher import (CheckpointError, Router, Scored, TeacherPool, TokenizerMismatch, check_checkpoint,
                         check_compatible)
from rl.async_rollout import start_rollout_worker
from rl.config import (AlgoConfig, AsyncConfig, DeepSpeedConfig, EngineConfig, RolloutConfig, SamplingConfig,
                       TrainConfig)
from rl.batch import collate
from rl.learner import PolicyLearner, init_distributed
from rl.orchestrator import RolloutCluster, sampling_params
from rollout.agent import AgentConfig
from rollout.chat import prompt_text, render_tool_call
from rollout.sglang_double import SGLangDouble
from rollout.sglang_engine import SGLangConfig
from rollout.tokenizer import build_bpe_tokenizer, load_tokenizer
from rollout.trajectory import Segment, Trajectory

SUITE = builtin_suite(0)
FAMILIES = ("wrong_operator", "off_by_one")
TASKS = [t for t in SUITE if t.split == "train" and t.family in FAMILIES]
DOMAINS = [DomainConfig("ops", ["wrong_operator"], 1.0), DomainConfig("bounds", ["off_by_one"], 1.0)]


def corpus(tasks):
    return [prompt_text(t.instruction) + "".join(render_tool_call(c) for c in scripted_solution(t)) for t in tasks]


def tiny_model(out, tok, seed, vocab_size=None):
    cfg = Qwen2Config(vocab_size=vocab_size or len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
                      tie_word_embeddings=True, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A student and two experts sharing one tokenizer (different random weights), plus a model
    with another tokenizer and one with another output size."""
    root = tmp_path_factory.mktemp("opd_models")
    tok = build_bpe_tokenizer(corpus(TASKS[:40]), 400, root / "tok")
    other_tok = build_bpe_tokenizer(corpus(TASKS[40:80]) + ["zzz qqq xyzzy"] * 50, 420, root / "other_tok")
    return {"student": tiny_model(root / "student", tok, 0), "ops": tiny_model(root / "ops", tok, 1),
            "bounds": tiny_model(root / "bounds", tok, 2), "other_tok": tiny_model(root / "other", other_tok, 3),
            "other_vocab": tiny_model(root / "wide", tok, 4, vocab_size=len(tok) + 8)}


@pytest.fixture(scope="module")
def ray_session():
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield
    ray.shutdown()


def experts(models):
    return [ExpertConfig(checkpoint=str(models["ops"]), name="ops_expert", domain="ops"),
            ExpertConfig(checkpoint=str(models["bounds"]), name="bounds_expert", domain="bounds")]


def direct_logprobs(path, ids, temperature):
    """log softmax(z/T) of each given id, computed here with a plain forward (not the engine)."""
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    logp = torch.log_softmax(logits[:-1] / temperature, -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
    return [0.0] + logp.tolist()


# ---- the formulas ------------------------------------------------------------------------------

def test_reverse_kl_advantage_equals_the_hand_computed_value():
    teacher = torch.tensor([[0.0, -1.0, -2.0, -0.5, -3.0]])
    student = torch.tensor([[0.0, -1.5, -1.0, -0.5, -0.25]])
    mask = torch.tensor([[0.0, 1.0, 1.0, 0.0, 1.0]])
    # Â_t = log π_T − log π_θ on action tokens: (-1 + 1.5, -2 + 1, ·, -3 + 0.25)
    adv = distillation_advantages(teacher, student, mask, kl_coef=1.0)
    assert adv.tolist() == [[0.0, 0.5, -1.0, 0.0, -2.75]]
    # λ_opd scales it; a task advantage is added with its coefficient, on action tokens only
    task = torch.tensor([[9.0, 0.4, 0.4, 9.0, 0.4]])
    adv = distillation_advantages(teacher, student, mask, kl_coef=2.0, task_coef=0.5, task_adv=task)
    assert torch.allclose(adv, torch.tensor([[0.0, 1.2, -1.8, 0.0, -5.3]]))
    # per-token reverse KL estimate: mean of (log π_θ − log π_T) = (-0.5 + 1 + 2.75) / 3
    assert sampled_reverse_kl(teacher, student, mask).item() == pytest.approx(3.25 / 3)
    # stop-gradient: no gradient flows through the advantage into the student's log-probs
    student.requires_grad_(True)
    assert not distillation_advantages(teacher, student, mask, kl_coef=1.0).requires_grad


def test_task_advantage_and_recovery():
    rewards = torch.tensor([1.0, 1.0, 0.0])        # rollout 0 has two segments, rollout 1 one
    rollout = torch.tensor([0, 0, 1])
    mask = torch.tensor([[0.0, 1.0], [1.0, 1.0], [0.0, 1.0]])
    assert task_advantage(rewards, rollout, mask).tolist() == [[0.0, 0.5], [0.5, 0.5], [0.0, -0.5]]
    assert recovery(before=0.1, after=0.37, expert=0.4) == pytest.approx(0.9)
    assert math.isnan(recovery(before=0.5, after=0.6, expert=0.5))


def test_opd_config_is_checked():
    base = ModelSource(checkpoint="/b")
    good = OPDConfig(domains=DOMAINS, experts=[ExpertConfig(checkpoint="/x", name="a", domain="ops"),
                                               ExpertConfig(checkpoint="/y", name="b", domain="bounds")], base=base)
    check_opd(good)
    with pytest.raises(ValueError, match="exactly one expert"):
        check_opd(OPDConfig(domains=DOMAINS, experts=good.experts[:1], base=base))
    with pytest.raises(ValueError, match="not in opd.domains"):
        check_opd(OPDConfig(domains=DOMAINS, experts=[good.experts[0], ExpertConfig("/z", name="c", domain="nope")],
                            base=base))
    with pytest.raises(ValueError, match="two domains"):
        check_opd(OPDConfig(domains=[DOMAINS[0], DomainConfig("again", ["wrong_operator"])], experts=good.experts,
                            base=base))
    with_urls = [ExpertConfig(checkpoint="/x", name="a", domain="ops", urls=["http://h:1"]), good.experts[1]]
    with pytest.raises(ValueError, match="urls/gpu_ids, which are for opd.teacher_engine=sglang"):
        check_opd(OPDConfig(domains=DOMAINS, experts=with_urls, base=base))
    check_opd(OPDConfig(domains=DOMAINS, experts=with_urls, base=base, teacher_engine="sglang"))
    with pytest.raises(ValueError, match="given per expert"):
        check_opd(OPDConfig(domains=DOMAINS, experts=with_urls, base=base, teacher_engine="sglang",
                            teacher_sglang=SGLangConfig(urls=["http://h:1"])))
    with pytest.raises(ValueError, match="lists 2 urls but opd.teacher_sglang.num_engines is 1"):
        check_opd(OPDConfig(domains=DOMAINS, base=base, teacher_engine="sglang", experts=[
            ExpertConfig(checkpoint="/x", name="a", domain="ops", urls=["http://h:1", "http://h:2"]), good.experts[1]]))
    with pytest.raises(ValueError, match=r"offpolicy_samples_per_task must be >= 0 .*\(got -1, 1\)"):
        check_opd(OPDConfig(domains=DOMAINS, experts=good.experts, base=base, offpolicy_samples_per_task=-1))
    with pytest.raises(ValueError, match=r"offpolicy_epochs >= 1 \(got 2, 0\)"):
        check_opd(OPDConfig(domains=DOMAINS, experts=good.experts, base=base, offpolicy_samples_per_task=2,
                            offpolicy_epochs=0))
    with pytest.raises(ValueError, match=r"offpolicy_replay .* needs opd.offpolicy_samples_per_task > 0 \(got 1, 0\)"):
        check_opd(OPDConfig(domains=DOMAINS, experts=good.experts, base=base, offpolicy_replay=1))
    with pytest.raises(ValueError, match="forward_kl_top_k must be >= 1 .got 0"):
        check_opd(OPDConfig(domains=DOMAINS, experts=good.experts, base=base, offpolicy_samples_per_task=2,
                            forward_kl_top_k=0))


# ---- start-up refusals ---------------------------------------------------------------------------

def test_tokenizer_or_vocabulary_mismatch_is_refused(models):
    check_compatible(models["student"], models["ops"], "ops_expert")
    with pytest.raises(TokenizerMismatch, match=r"does not share the student's tokenizer") as err:
        check_compatible(models["student"], models["other_tok"], "odd_expert")
    assert str(models["other_tok"]) in str(err.value) and "odd_expert" in str(err.value)
    with pytest.raises(TokenizerMismatch, match=r"output vocabulary of \d+ logits"):
        check_compatible(models["student"], models["other_vocab"], "wide_expert")


def test_missing_and_corrupt_checkpoints_name_the_path(models, tmp_path):
    check_checkpoint(models["ops"], "expert 'ops'")
    missing = tmp_path / "nowhere"
    with pytest.raises(CheckpointError, match=str(missing)):
        check_checkpoint(missing, "expert 'x'")
    with pytest.raises(CheckpointError, match=str(missing)):
        ensure_model(ModelSource(checkpoint=str(missing)), "expert x", [], print)
    broken = tmp_path / "broken"
    shutil.copytree(models["ops"], broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=str(weights)):
        check_checkpoint(broken, "expert 'broken'")
    (broken / "config.json").write_text("{ not json")
    with pytest.raises(CheckpointError, match=str(broken)):
        check_checkpoint(broken, "expert 'broken'")


# ---- teacher scoring and routing -----------------------------------------------------------------

def non_canonical_trajectory(tok, task, rollout_id):
    """A trajectory whose action ids are a tokenisation the tokenizer would never produce (one id per
    character): decoding and re-encoding them would give other, fewer ids."""
    seg = Segment(rollout_id=rollout_id, index=0)
    seg.append(tok.encode(prompt_text(task.instruction)), sampled=False)
    chars = [tok.convert_tokens_to_ids(c) for c in "read_file"]
    assert None not in chars and tok.encode(tok.decode(chars)) != chars
    seg.append(chars, sampled=True, logprobs=[-1.0] * len(chars), versions=[0] * len(chars))
    seg.append(tok.encode("\nok\n"), sampled=False)
    return Trajectory(rollout_id=rollout_id, task_id=task.task_id, segments=[seg])


def test_teacher_scores_the_students_token_ids_unchanged(models, ray_session):
    tok = load_tokenizer(models["student"])
    router = Router(DOMAINS, experts(models))
    pool = TeacherPool(experts(models), router, tok.pad_token_id, temperature=0.7, seed=0, threads=1, max_batch=8,
                       batch_wait_s=0.0)
    try:
        task = TASKS[0]
        traj = non_canonical_trajectory(tok, task, "r0")
        (scored,) = pool.score([task], [traj])
        ids = traj.segments[0].tokens
        assert len(scored.teacher_logprobs[0]) == len(ids)
        expected = direct_logprobs(models[router.domain(task)], ids, 0.7)
        assert scored.teacher_logprobs[0] == pytest.approx(expected, abs=1e-5)
        # the temperature is the rollout's: at T = 1 the same ids score differently
        assert scored.teacher_logprobs[0] != pytest.approx(direct_logprobs(models[router.domain(task)], ids, 1.0),
                                                           abs=1e-3)
        assert scored.teacher_top_ids == [[]]            # no top-k asked for: none carried
    finally:
        pool.shutdown()
    # with top_k, the expert also names its k most likely tokens at every position (a plain forward's)
    pool = TeacherPool(experts(models), router, tok.pad_token_id, temperature=0.7, seed=0, threads=1, max_batch=8,
                       batch_wait_s=0.0, top_k=3)
    try:
        (scored,) = pool.score([task], [traj])
        model = AutoModelForCausalLM.from_pretrained(str(models[router.domain(task)]), dtype=torch.float32)
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, :-1].float() / 0.7, -1)
        top_lp, top_ids = logp.topk(3, dim=-1)
        assert scored.teacher_top_ids[0][1:] == top_ids.tolist()
        torch.testing.assert_close(torch.tensor(scored.teacher_top_logprobs[0][1:]), top_lp, atol=1e-5, rtol=0)
        assert scored.teacher_logprobs[0] == pytest.approx(expected, abs=1e-5)
    finally:
        pool.shutdown()


def test_sglang_teachers_score_the_students_ids_as_the_hf_teachers_do(models, ray_session):
    """opd.teacher_engine=sglang: each expert on its own SGLang server (the 0.5.23 test double, as
    SGLang cannot run without a GPU), scoring by prefill-only /generate; at temperature 1 the scores
    and the top k equal a plain forward's, each trajectory scored by its domain's server only."""
    tok = load_tokenizer(models["student"])
    servers = {name: SGLangDouble(models[name], weight_version="0") for name in ("ops", "bounds")}
    for server in servers.values():
        server.start()
    sglang_experts = [ExpertConfig(checkpoint=str(models[d]), name=f"{d}_expert", domain=d, urls=[servers[d].url])
                      for d in ("ops", "bounds")]
    router = Router(DOMAINS, sglang_experts)
    with pytest.raises(ray.exceptions.RayTaskError, match="temperature 1 only"):
        bad = TeacherPool(sglang_experts, router, tok.pad_token_id, temperature=0.7, seed=0, threads=1, max_batch=8,
                          batch_wait_s=0.0, engine="sglang")
        try:
            bad.score([TASKS[0]], [non_canonical_trajectory(tok, TASKS[0], "r0")])
        finally:
            bad.shutdown()
    pool = TeacherPool(sglang_experts, router, tok.pad_token_id, temperature=1.0, seed=0, threads=1, max_batch=8,
                       batch_wait_s=0.0, top_k=3, engine="sglang")
    try:
        tasks = [next(t for t in TASKS if t.family == f) for f in FAMILIES]
        trajs = [non_canonical_trajectory(tok, t, f"r{i}") for i, t in enumerate(tasks)]
        for task, traj, scored in zip(tasks, trajs, pool.score(tasks, trajs)):
            ids, domain = traj.segments[0].tokens, router.domain(task)
            assert scored.expert == f"{domain}_expert"
            assert scored.teacher_logprobs[0] == pytest.approx(direct_logprobs(models[domain], ids, 1.0), abs=1e-4)
            model = AutoModelForCausalLM.from_pretrained(str(models[domain]), dtype=torch.float32)
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, :-1].float(), -1)
            assert scored.teacher_top_ids[0][1:] == logp.topk(3, dim=-1).indices.tolist()
        for task, traj in zip(tasks, trajs):   # each server scored its own domain's trajectory, ids unchanged
            assert servers[router.domain(task)].prompts == [traj.segments[0].tokens]
    finally:
        pool.shutdown()
        for server in servers.values():
            server.stop()


def rollout_config():
    return TrainConfig(seed=0, engine=EngineConfig(num_threads=1, max_batch=64, batch_wait_s=0.005),
                       agent=AgentConfig(max_turns=2, max_context_tokens=1024),
                       sampling=SamplingConfig(max_new_tokens=8),
                       rollout=RolloutConfig(num_workers=2, max_concurrent_per_worker=8, episodes_per_step=6),
                       antihack=GuardConfig(enabled=False))


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_rollouts_are_routed_to_their_domains_teacher_only(models, ray_session, mode):
    """Real student episodes from the domain mixture: every trajectory is scored by its domain's
    expert (same log-probs as that expert computes directly), never by the other one."""
    cfg = rollout_config()
    tok = load_tokenizer(models["student"])
    cluster = RolloutCluster(str(models["student"]), tok, cfg)
    router = Router(DOMAINS, experts(models))
    pool = TeacherPool(experts(models), router, tok.pad_token_id, temperature=1.0, seed=0, threads=1, max_batch=8,
                       batch_wait_s=0.0)
    tasks = {d.name: [t for t in TASKS if t.family in d.families] for d in DOMAINS}
    mixture = DomainMixture(tasks, {"ops": 1.0, "bounds": 1.0}, seed=0)
    source = ScoredRolloutSource(cluster, mixture, pool, mode, AsyncConfig(buffer_size=8, max_staleness=4),
                                 lambda: start_rollout_worker(cluster.engine, str(models["student"]), cfg))
    try:
        scored, metrics = source.next_batch(6, learner_version=0)
        assert len(scored) == 6 and len({s.trajectory.rollout_id for s in scored}) == 6
        assert {s.domain for s in scored} == {"ops", "bounds"}   # seed 0 draws both domains
        family = {t.task_id: t.family for t in TASKS}
        for s in scored:
            domain = "ops" if family[s.trajectory.task_id] == "wrong_operator" else "bounds"
            assert (s.domain, s.expert) == (domain, f"{domain}_expert")
            other = "bounds" if domain == "ops" else "ops"
            ids = s.trajectory.segments[0].tokens
            assert s.teacher_logprobs[0] == pytest.approx(direct_logprobs(models[domain], ids, 1.0), abs=1e-5)
            assert s.teacher_logprobs[0] != pytest.approx(direct_logprobs(models[other], ids, 1.0), abs=1e-3)
        if mode == "async":
            assert metrics["orchestrator/in_flight"] >= 8 - 1   # the next batch is already generating
    finally:
        source.close()
        pool.shutdown()
        cluster.shutdown()


def test_expert_episodes_are_each_experts_own_on_its_own_domain(models, ray_session):
    """The off-policy phase's data: every expert rolls out m episodes on each training task of its own
    domain (on its teacher engine, concurrently), and the top-k it returns comes from scoring its own
    tokens: its log-probs of them equal the log-probs it sampled them with."""
    cfg = rollout_config()
    tok = load_tokenizer(models["student"])
    router = Router(DOMAINS, experts(models))
    pool = TeacherPool(experts(models), router, tok.pad_token_id, temperature=1.0, seed=0, threads=1, max_batch=8,
                       batch_wait_s=0.0, top_k=3)
    train = {"ops": [t for t in TASKS if t.family == "wrong_operator"][:3],
             "bounds": [t for t in TASKS if t.family == "off_by_one"][:2]}
    try:
        episodes = expert_episodes(pool, experts(models), train, {"ops": 2, "bounds": 1}, cfg, sampling_params(cfg, tok))
    finally:
        pool.shutdown()
    assert len(episodes) == 2 * 3 + 1 * 2
    family = {t.task_id: t.family for t in TASKS}
    for s in episodes:
        domain = "ops" if family[s.trajectory.task_id] == "wrong_operator" else "bounds"
        assert (s.domain, s.expert) == (domain, f"{domain}_expert")
        assert s.trajectory.rollout_id.startswith(f"offpolicy-{domain}_expert-{s.trajectory.task_id}-")
        for seg, own, top in zip(s.trajectory.segments, s.teacher_logprobs, s.teacher_top_ids):
            sampled = [i for i, m in enumerate(seg.loss_mask) if m]
            assert sampled and len(top) == len(seg.tokens) and all(len(k) == 3 for k in top[1:])
            assert [own[i] for i in sampled] == pytest.approx([seg.behavior_logprobs[i] for i in sampled], abs=1e-4)
    for domain, m in (("ops", 2), ("bounds", 1)):   # the domain's m episodes per task, each task of the domain
        ids = sorted(s.trajectory.task_id for s in episodes if s.domain == domain)
        assert ids == sorted(t.task_id for t in train[domain] for _ in range(m))


def test_offpolicy_samples_follow_the_domain_weights():
    """m episodes per task for the lightest domain, m · w_k / w_min for the others (rounded, at least 1);
    only the weights' ratios count, as for the on-policy mixture."""
    def domains(*weights):
        return [DomainConfig(name=f"d{i}", families=[f"f{i}"], weight=w) for i, w in enumerate(weights)]
    assert offpolicy_samples(domains(1.0, 1.0), 4) == {"d0": 4, "d1": 4}
    assert offpolicy_samples(domains(2.0, 1.0), 4) == {"d0": 8, "d1": 4}
    assert offpolicy_samples(domains(1.0, 0.5), 4) == offpolicy_samples(domains(2.0, 1.0), 4)
    assert offpolicy_samples(domains(1.5, 1.0, 3.0), 2) == {"d0": 3, "d1": 2, "d2": 6}
    assert offpolicy_samples(domains(1.0, 0.1), 1) == {"d0": 10, "d1": 1}
    assert offpolicy_samples(domains(1.0, 1.0), 0) == {}   # m = 0: no off-policy phase


def test_offpolicy_batches_are_shuffled_epochs_and_count_the_steps():
    episodes = list(range(10))
    batches = offpolicy_batches(episodes, 4, 3, seed=0)
    assert [len(b) for b in batches] == [4, 4, 2] * 3
    epochs = [sum(batches[i:i + 3], []) for i in (0, 3, 6)]
    assert all(sorted(e) == episodes for e in epochs)        # every episode once per pass
    assert epochs[0] != epochs[1] and epochs[0] != episodes  # each pass shuffled anew
    assert batches == offpolicy_batches(episodes, 4, 3, seed=0)
    assert offpolicy_step_count({"a": [None] * 3, "b": [None] * 2}, {"a": 2, "b": 2}, 3, 4) == 9 == len(
        offpolicy_batches(episodes, 4, 3, seed=1))
    assert offpolicy_step_count({"a": [None] * 3, "b": [None] * 2}, {"a": 3, "b": 1}, 2, 4) == 2 * 3   # 11 episodes
    with pytest.raises(ValueError, match="batch size"):
        offpolicy_batches(episodes, 0, 1, seed=0)
    replay = replay_batches(episodes, 4, seed=0)             # opd.offpolicy_replay: passes without end
    passes = [sum((next(replay) for _ in range(3)), []) for _ in range(4)]
    assert all(sorted(p) == episodes for p in passes) and len({tuple(p) for p in passes}) == 4


def test_router_refuses_a_task_outside_every_domain(models):
    router = Router(DOMAINS, experts(models))
    stray = next(t for t in SUITE if t.family == "missing_case")
    with pytest.raises(KeyError, match="belongs to no OPD domain"):
        router.expert(stray)


# ---- the learner ---------------------------------------------------------------------------------

def scored_demos(tok, count, action_len, behaviour_lp, teacher_lp, top=None):
    """`count` one-segment trajectories (a task prompt, then the first `action_len(i)` ids of its scripted
    first call as sampled actions with log-prob `behaviour_lp`), scored by the "ops" expert with log-prob
    `teacher_lp` on every action token and, if given, `top` = (ids, log-probs) as its top-k everywhere."""
    scored = []
    for i, task in enumerate(TASKS[:count]):
        seg = Segment(rollout_id=f"r{i}", index=0)
        seg.append(tok.encode(prompt_text(task.instruction)), sampled=False)
        action = tok.encode(render_tool_call(scripted_solution(task)[0]))[:action_len(i)]
        seg.append(action, sampled=True, logprobs=[behaviour_lp] * len(action), versions=[0] * len(action))
        n = len(seg.tokens)
        tops = ([[top[0]] * n], [[top[1]] * n]) if top else ([], [])
        scored.append(Scored(Trajectory(rollout_id=f"r{i}", task_id=task.task_id, segments=[seg]), "ops",
                             "ops_expert", [[teacher_lp * m for m in seg.loss_mask]], *tops))
    return scored


def test_opd_steps_move_the_student_toward_the_teacher(models):
    """On fixed student samples scored by a teacher that likes them (log π_T = −0.1 on every action
    token), OPD steps raise the student's log-probs toward the teacher's: |reverse KL| falls."""
    init_distributed(DeepSpeedConfig(master_port=29631))
    tok = load_tokenizer(models["student"])
    scored = scored_demos(tok, 8, lambda i: 12, 0.0, -0.1)
    trajs = [s.trajectory for s in scored]
    algo = AlgoConfig(policy_lr=1e-2, micro_batch_tokens=256, dis_low=0.0, dis_high=1e9)
    learner = OPDLearner(PolicyLearner(models["student"], algo.policy_lr, algo, DeepSpeedConfig(), 1.0),
                         OPDConfig(domains=DOMAINS[:1]), tok.pad_token_id)
    first = learner.train_step(scored)
    for _ in range(8):
        last = learner.train_step(scored)
    assert math.isfinite(first["policy/loss"]) and math.isfinite(last["policy/grad_norm"])
    assert abs(last["opd/reverse_kl/ops"]) < 0.5 * abs(first["opd/reverse_kl/ops"])
    width = max(len(t.segments[0].tokens) for t in trajs)
    assert teacher_tensor(scored, width).shape == (8, width)


def test_mini_batches_are_interleaved_steps_on_the_whole_batchs_advantage(models):
    """algo.policy_mini_batches = 2 in OPD: Â from the whole batch, then one optimiser step on rows
    0, 2, 4 and one on rows 1, 3, 5 (reverse-KL advantage and forward-KL top-k sliced alike); the same
    two ppo_step calls by hand give the same weights, and one full-batch step does not."""
    init_distributed(DeepSpeedConfig(master_port=29631))
    tok = load_tokenizer(models["student"])
    scored = scored_demos(tok, 6, lambda i: 6 + i, -1.0, -0.2, top=([7, 9], [-0.1, -2.4]))
    algo = AlgoConfig(policy_lr=1e-2, micro_batch_tokens=256, policy_mini_batches=2)
    opd = OPDConfig(domains=DOMAINS[:1], kl_coef=1.0, forward_kl_coef=0.5, forward_kl_top_k=2)
    auto = OPDLearner(PolicyLearner(models["student"], algo.policy_lr, algo, DeepSpeedConfig(), 1.0), opd,
                      tok.pad_token_id)
    metrics = auto.train_step(scored)
    batch = collate([s.trajectory for s in scored], tok.pad_token_id)
    width, mask = batch.input_ids.shape[1], batch.action_mask
    by_hand = PolicyLearner(models["student"], algo.policy_lr, algo, DeepSpeedConfig(), 1.0)
    student = by_hand.logprobs(batch) * mask
    adv = distillation_advantages(teacher_tensor(scored, width) * mask, student, mask, 1.0, 0.0, None)
    ids, lps = teacher_top_k(scored, width, 2)
    for rows in ([0, 2, 4], [1, 3, 5]):
        by_hand.ppo_step(batch.rows(rows), adv[rows], student[rows], (ids[rows], lps[rows], 0.5))
    one_step = PolicyLearner(models["student"], algo.policy_lr, algo, DeepSpeedConfig(), 1.0)
    one_step.ppo_step(batch, adv, student, (ids, lps, 0.5))
    after, want, single = auto.policy.logprobs(batch), by_hand.logprobs(batch), one_step.logprobs(batch)
    assert torch.allclose(after, want, atol=1e-5)
    assert not torch.allclose(after, single, atol=1e-4)     # two optimiser steps, not one
    assert metrics["policy/forward_kl"] > 0.0 and math.isfinite(metrics["policy/loss"])


def test_forward_kl_term_raises_the_teachers_top_tokens(models):
    """kl_coef = 0, forward_kl_coef = 1: the only signal is the expert's top-2 at the student's own
    states (token 7, then 9); OPD steps make token 7 the student's most likely choice there."""
    init_distributed(DeepSpeedConfig(master_port=29631))
    tok = load_tokenizer(models["student"])
    scored = scored_demos(tok, 6, lambda i: 10, 0.0, 0.0, top=([7, 9], [-0.1, -2.4]))
    algo = AlgoConfig(policy_lr=1e-2, micro_batch_tokens=256, dis_low=0.0, dis_high=1e9)
    policy = PolicyLearner(models["student"], algo.policy_lr, algo, DeepSpeedConfig(), 1.0)
    learner = OPDLearner(policy, OPDConfig(domains=DOMAINS[:1], kl_coef=0.0, forward_kl_coef=1.0, forward_kl_top_k=2),
                         tok.pad_token_id)
    batch = collate([s.trajectory for s in scored], tok.pad_token_id)
    act = batch.action_mask.bool()

    def share_of_7():
        with torch.no_grad():
            logits = policy.engine(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        p7 = torch.softmax(logits[:, :-1].float(), -1)[..., 7]
        return float(p7[act[:, 1:]].mean())

    start = share_of_7()
    metrics = [learner.train_step(scored) for _ in range(15)]
    assert metrics[-1]["policy/forward_kl"] < metrics[0]["policy/forward_kl"]
    assert start < 0.2 and share_of_7() > 0.5
    with pytest.raises(ValueError, match="top-2"):
        OPDLearner(policy, OPDConfig(domains=DOMAINS[:1], forward_kl_coef=1.0, forward_kl_top_k=2),
                   tok.pad_token_id).train_step([Scored(s.trajectory, "ops", "ops_expert", s.teacher_logprobs)
                                                 for s in scored])


def test_offpolicy_step_learns_the_experts_top_k_whatever_the_behaviour_logprobs(models):
    """The off-policy phase's step: only the expert's top-k on its own episodes counts (token 7, then
    9); the episodes' behaviour log-probs (the expert's) and its sampled log-probs carry no signal:
    two batches that differ only there give the same weights. Steps make token 7 the most likely."""
    init_distributed(DeepSpeedConfig(master_port=29631))
    tok = load_tokenizer(models["student"])
    top = ([7, 9], [-0.1, -2.4])
    algo = AlgoConfig(policy_lr=1e-2, micro_batch_tokens=256)
    opd = OPDConfig(domains=DOMAINS[:1], forward_kl_top_k=2)
    a = OPDLearner(PolicyLearner(models["student"], algo.policy_lr, algo, DeepSpeedConfig(), 1.0), opd, tok.pad_token_id)
    b = OPDLearner(PolicyLearner(models["student"], algo.policy_lr, algo, DeepSpeedConfig(), 1.0), opd, tok.pad_token_id)
    scored_a = scored_demos(tok, 6, lambda i: 10, 0.0, 0.0, top=top)
    scored_b = scored_demos(tok, 6, lambda i: 10, -3.0, -1.5, top=top)
    first = a.offpolicy_step(scored_a)
    b.offpolicy_step(scored_b)
    batch = collate([s.trajectory for s in scored_a], tok.pad_token_id)
    assert torch.allclose(a.policy.logprobs(batch), b.policy.logprobs(batch), atol=1e-6)
    assert first["offpolicy/expert_pass_rate/ops"] == 0.0 and first["offpolicy/action_tokens"] == 60
    act = batch.action_mask.bool()

    def share_of_7():
        with torch.no_grad():
            logits = a.policy.engine(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        return float(torch.softmax(logits[:, :-1].float(), -1)[..., 7][act[:, 1:]].mean())

    assert share_of_7() < 0.2
    last = [a.offpolicy_step(scored_a) for _ in range(14)][-1]
    assert last["offpolicy/forward_kl"] < 0.5 * first["offpolicy/forward_kl"] and share_of_7() > 0.5
