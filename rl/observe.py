"""What a user watches: a live console view, wandb, a PNG plot, and summary.json.

On a terminal the console shows a live table (rich) with step, reward, pass rate, losses and
throughput; elsewhere (CI logs, files) it prints one line per step.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import matplotlib
import wandb
from rich.console import Console
from rich.live import Live
from rich.table import Table

from rl.checkpoint import POLICY_HF
from rl.config import LoggingConfig, TrainConfig

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CONSOLE_KEYS = ("rollout/reward", "rollout/pass_rate", "antihack/flagged", "antihack/confirmed", "antihack/blocked",
                "leak/honest_pass_rate", "critic/loss", "critic/explained_variance", "policy/loss",
                "policy/entropy", "policy/masked_fraction", "rollout/segments_per_rollout", "orchestrator/wait_s",
                "perf/step_s")
WARM_START_PHASES = ("sft", "offpolicy")   # phases before the main loop, each logged against its own step


class RunLogger:
    def __init__(self, run_dir: Path, cfg: LoggingConfig, config: dict, run_name: str, total_steps: int) -> None:
        self.run_dir = run_dir
        self.cfg = cfg
        self.total_steps = total_steps
        self.console = Console(stderr=False)
        self.history: list[dict] = []
        self.events: list[tuple[str, float]] = []
        self.started = time.time()
        self.run = wandb.init(project=cfg.wandb_project, name=run_name, dir=str(run_dir), mode=cfg.wandb_mode,
                              config=config, reinit="finish_previous")
        for phase in WARM_START_PHASES:   # warm-up phases count their own steps
            self.run.define_metric(f"{phase}/*", step_metric=f"{phase}/step")
        self.run.define_metric("*", step_metric="train/step")
        self.live: Live | None = None
        if cfg.console and self.console.is_terminal:
            self.live = Live(self._table(), console=self.console, refresh_per_second=4, transient=False)
            self.live.start()

    @property
    def wandb_dir(self) -> str:
        return str(Path(self.run.dir).parent) if self.run is not None and self.run.dir else ""

    def phase(self, text: str) -> None:
        """A one-off milestone (warm start, evaluation, ...), printed and kept for the summary."""
        elapsed = time.time() - self.started
        self.events.append((text, elapsed))
        if self.cfg.console:
            self.console.log(f"[{elapsed:6.1f}s] {text}")

    def log_warm_start(self, step: int, total: int, metrics: dict, phase: str = "sft") -> None:
        """Warm-up progress (SFT; OPD's off-policy phase, metrics ``<phase>/*``): to wandb every step,
        against ``<phase>/step``, to the console every tenth of the way."""
        if phase not in WARM_START_PHASES:
            raise ValueError(f"warm-up phase {phase!r} is not one of {WARM_START_PHASES}")
        self.run.log({**metrics, f"{phase}/step": step})
        if self.cfg.console and (step + 1) % max(1, total // 10) == 0:
            shown = " ".join(f"{k.split('/')[-1]}={v:.3g}" for k, v in metrics.items())
            self.console.print(f"  {phase} {step + 1}/{total} {shown}", highlight=False)

    def log(self, step: int, metrics: dict) -> None:
        self.history.append({"step": step, **metrics})
        with (self.run_dir / "metrics.jsonl").open("a") as f:
            f.write(json.dumps({"step": step + 1, **metrics}) + "\n")
        self.run.log({**metrics, "train/step": step + 1})
        if self.live is not None:
            self.live.update(self._table())
        elif self.cfg.console:
            shown = " ".join(f"{k.split('/')[-1]}={metrics[k]:.3g}" for k in CONSOLE_KEYS if k in metrics)
            self.console.print(f"step {step + 1}/{self.total_steps} {shown}", highlight=False)

    def _table(self) -> Table:
        table = Table(title=f"horizonrl — {self.run_dir}", expand=False)
        table.add_column("step", justify="right")
        for key in CONSOLE_KEYS:
            table.add_column(key.split("/")[-1], justify="right")
        for row in self.history[-12:]:
            table.add_row(f"{row['step'] + 1}/{self.total_steps}",
                          *(f"{row[k]:.3g}" if k in row else "" for k in CONSOLE_KEYS))
        return table

    def plot(self, path: Path, before: float, after: float, decoding: str = "sampled") -> None:
        """Reward and pass rate over training steps, with the held-out pass rate before and after
        (`decoding`: how the held-out episodes were decoded, in the legend)."""
        steps = [r["step"] + 1 for r in self.history]
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(steps, [r.get("rollout/reward", 0.0) for r in self.history], label="train reward (mean)")
        ax.plot(steps, [r.get("rollout/pass_rate_ema", 0.0) for r in self.history], label="train pass rate (EMA)")
        ax.axhline(before, ls="--", color="gray", label=f"held-out before RL, {decoding} ({before:.2f})")
        ax.axhline(after, ls="--", color="green", label=f"held-out after RL, {decoding} ({after:.2f})")
        ax.set_xlabel("PPO step")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(loc="lower right", fontsize=8)
        ax.set_title("horizonrl: critic PPO on the built-in bug-fix suite")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)

    def finish(self, summary: dict) -> Path:
        if self.live is not None:
            self.live.stop()
        self.run.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float, str))})
        self.run.finish()
        path = self.run_dir / "summary.json"
        path.write_text(json.dumps(summary, indent=2, sort_keys=True))
        if self.cfg.console:
            table = Table(title="summary")
            table.add_column("key")
            table.add_column("value", justify="right")
            for k, v in summary.items():
                if isinstance(v, (int, float, str)):
                    table.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
            self.console.print(table)
        return path


def run_summary(cfg: TrainConfig, before, after, log: RunLogger, checkpoint: Path | None, rl_wall_time_s: float) -> dict:
    """summary.json: the held-out pass rate before and after RL (both `EvalResult`s), timings, paths.
    The held-out episodes themselves go beside it, one JSON line each (:func:`write_episodes`)."""
    episodes = {tag: write_episodes(log.run_dir / f"heldout_{tag}_rl.jsonl", result.trajectories)
                for tag, result in (("before", before), ("after", after))}
    return {
        "experiment": cfg.experiment, "steps": cfg.steps,
        "heldout_pass_rate_before_rl": before.pass_rate, "heldout_pass_rate_after_rl": after.pass_rate,
        "heldout_gain_points": 100 * (after.pass_rate - before.pass_rate),
        "heldout_per_family_before": before.per_family, "heldout_per_family_after": after.per_family,
        "heldout_episodes": after.episodes, "heldout_decoding": after.decoding,
        **sampled_summary(before, after, log.run_dir), "rl_wall_time_s": rl_wall_time_s,
        "wall_time_s": time.time() - log.started, "wandb_dir": log.wandb_dir,
        "checkpoint_dir": str(checkpoint / POLICY_HF) if checkpoint is not None else "",
        "resume_checkpoint": str(checkpoint) if checkpoint is not None else "",
        "plot": str(log.run_dir / "pass_rate.png"), "metrics": str(log.run_dir / "metrics.jsonl"),
        "heldout_episodes_before_rl": episodes["before"], "heldout_episodes_after_rl": episodes["after"],
        "final_metrics": log.history[-1] if log.history else {},
        "heldout_hack_before_rl": before.hack, "heldout_hack_after_rl": after.hack,
        "segments_per_rollout": {  # > 1: episodes were compacted (agent.compaction)
            "heldout_before_rl": mean_segments(before.trajectories), "heldout_after_rl": mean_segments(after.trajectories),
            "rl_steps": (sum(m.get("rollout/segments_per_rollout", 1.0) for m in log.history) / len(log.history)
                         if log.history else 0.0)},
    }


def describe(result) -> str:
    """One held-out figure for the console: '0.286 greedy (84 episodes); sampled 0.190 (84)'."""
    text = f"{result.pass_rate:.3f} {result.decoding} ({result.episodes} episodes)"
    if result.sampled is not None:
        text += f"; sampled {result.sampled.pass_rate:.3f} ({result.sampled.episodes})"
    return text


def sampled_summary(before, after, run_dir: Path) -> dict:
    """A greedy evaluation's sampled figures beside it (eval.sampled_samples_per_task), if any."""
    if before.sampled is None or after.sampled is None:
        return {}
    return {
        "heldout_sampled_pass_rate_before_rl": before.sampled.pass_rate,
        "heldout_sampled_pass_rate_after_rl": after.sampled.pass_rate,
        "heldout_sampled_gain_points": 100 * (after.sampled.pass_rate - before.sampled.pass_rate),
        "heldout_sampled_episodes": after.sampled.episodes,
        "heldout_sampled_episodes_before_rl": write_episodes(run_dir / "heldout_sampled_before_rl.jsonl",
                                                             before.sampled.trajectories),
        "heldout_sampled_episodes_after_rl": write_episodes(run_dir / "heldout_sampled_after_rl.jsonl",
                                                            after.sampled.trajectories),
    }


def mean_segments(trajectories) -> float:
    """Segments (sub-traces) per rollout: 1 without compaction, one more per compaction."""
    return sum(len(t.segments) for t in trajectories) / len(trajectories) if trajectories else 0.0


def write_episodes(path: Path, trajectories) -> str:
    """One JSON line per episode (rollout id, task, grade, reward, status, turns, the transcript of
    actions and observations): what a held-out pass rate was measured on, for reading afterwards."""
    with path.open("w") as f:
        for t in trajectories:
            f.write(json.dumps({"rollout_id": t.rollout_id, "task_id": t.task_id, "passed": t.passed,
                                "reward": t.reward, "status": t.status.value, "turns": t.num_turns,
                                "segments": len(t.segments), "transcript": t.transcript}) + "\n")
    return str(path)
