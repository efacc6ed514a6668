"""The training loop every method shares.

`Trainer.run()` reads top to bottom: set up (seed, backend, tokenizer, models, data, optimizer), resume from the
newest complete checkpoint if there is one, then for each optimizer step: gather the step's micro-batches, compute
each one's loss terms, back-propagate with token-count weights, step; log, validate, checkpoint; finally hand off
`final/`. A method says only what a micro-batch is (`micro_batches`), what its loss is (`loss_terms`) and what state
of its own a checkpoint must carry (`method_state`); the math lives in `takd.losses` / `takd.train.minillm`, the
"plain torch or DeepSpeed" decision in `takd.train.backend`.

Resumability: re-running the same command resumes from the newest complete checkpoint and continues the same
trajectory (CPU: bit-identical up to float reassociation). A stage whose `final/` is complete is not re-run.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections import defaultdict
from functools import partial
from pathlib import Path
from typing import Any

import torch

from takd import checkpoint as ckpt
from takd import config as cfglib
from takd import dist
from takd.data.examples import EpochSampler, Example, collate_sft, encode_rows
from takd.data.rows import load_rows
from takd.evaluate.metrics import score
from takd.models.loading import check_same_tokenizer, load_tokenizer_for, model_dir
from takd.models.registry import base_model_name
from takd.train.backend import create_backend
from takd.train.checkpointing import Checkpointer, card_for, config_fingerprint, resumable, write_hf
from takd.train.config import StageConfig, optimizer_steps
from takd.train.metrics_log import MetricsLog, progress_bar, setup_line
from takd.train.preemption import Preempted, PreemptionGuard
from takd.train.trackers import open_trackers
from takd.train.validation import BestKeeper, validation_examples, validation_generations, validation_loss


class NonFiniteLoss(RuntimeError):
    """A loss term became NaN or inf: the stage stops before the optimizer step."""


def check_finite(terms: dict[str, torch.Tensor], stage: str, step: int) -> None:
    """Stop before a NaN/inf reaches the weights: one line naming the step and the term (every rank agrees)."""
    bad = [k for k, v in terms.items() if not bool(torch.isfinite(v.detach()).all())]
    if dist.any_true(bool(bad)):
        where = f"loss term {bad[0]!r} is {float(terms[bad[0]].detach().float().mean())}" if bad else \
            "a loss term is not finite on another rank"
        raise NonFiniteLoss(f"stage {stage}, optimizer step {step}: {where}; nothing was updated (the newest "
                            "checkpoint is intact): lower optim.lr, or use float32/bfloat16")


class Trainer:
    """Shared loop. Subclasses define `loss_terms` (and optionally `micro_batches`, `build_train_examples`,
    `extra_validation`, `method_state` / `load_method_state`)."""

    needs_teacher = False

    def __init__(self, cfg: StageConfig, preemption: PreemptionGuard | None = None, force_config: bool = False):
        self.cfg = cfg
        self.out = cfg.out
        self.step = 0
        self.preemption = preemption  # set: SIGUSR2/SIGTERM save at the next step boundary, then stop
        self.force_config = force_config  # checkpoints of another config: moved aside instead of refused

    # ------------------------------------------------------------------------------------------------ run
    def run(self) -> Path:
        final = self.out / "final"
        if ckpt.is_complete(final):
            print(f"[{self.cfg.name}] already complete: {final}", flush=True)
            return final
        with ckpt.StageLock(self.out) if dist.is_main() else contextlib.nullcontext():  # one writer per stage
            for line in ckpt.recover(self.out) if dist.is_main() else []:
                print(f"[{self.cfg.name}] {line}", flush=True)
            self.setup()
            if self.resume_from is not None:
                self.restore(self.resume_from)
            else:
                self.metrics.truncate_after(0)  # rows of a run killed before its first checkpoint
            self.log_setup()
            self.train()
            return self.finish()

    def setup(self) -> None:
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(cfg.seed)
        self.backend = create_backend(cfg)
        self.rank, self.world = self.backend.rank, self.backend.world
        if self.rank == 0:  # tiny models are built on first use: once, by one process, never inside zero.Init
            for name in filter(None, (cfg.student, cfg.teacher if self.needs_teacher else None)):
                model_dir(name)
        dist.barrier()
        self.resume_from = resumable(self.out / "checkpoints", cfg, self.rank, self.force_config)
        self.tokenizer = load_tokenizer_for(cfg.student)
        self.student = self.backend.load_student(str(self.resume_from) if self.resume_from else cfg.student)
        self.teacher = self.load_teacher() if (self.needs_teacher and cfg.teacher) else None
        self.train_examples = self.build_train_examples()
        self.valid_examples = validation_examples(cfg, self.tokenizer, cfg.eval_prompts)
        self.sampler = EpochSampler(len(self.train_examples), seed=cfg.seed)
        self.max_steps = optimizer_steps(cfg, len(self.train_examples))
        self.backend.prepare(self.student, self.max_steps)
        self.metrics = MetricsLog(self.out, cfg.name, enabled=self.rank == 0, trackers=partial(
            open_trackers, self.out, cfg.name, cfglib.to_dict(cfg), cfg.tensorboard, cfg.wandb, cfg.wandb_project))
        self.best = BestKeeper(cfg.select_by)
        self.checkpoints = Checkpointer(self.out, self.backend, keep=cfg.keep_checkpoints, export=partial(
            write_hf, self.student, self.tokenizer, base=base_model_name(cfg.student), stage=cfg.name,
            method=cfg.method, **card_for(cfg, self.tokenizer)))
        self.student.train()

    def load_teacher(self) -> torch.nn.Module:
        check_same_tokenizer(self.tokenizer, load_tokenizer_for(self.cfg.teacher), self.cfg.student,
                             self.cfg.teacher)
        return self.backend.load_teacher(self.cfg.teacher)

    def build_train_examples(self) -> list[Example]:
        cfg = self.cfg
        return encode_rows(load_rows(cfg.dataset, "train", seed=0), self.tokenizer, cfg.max_prompt_tokens,
                           cfg.max_new_tokens, prompt_format=cfg.prompt_format)

    def log_setup(self) -> None:
        if self.rank == 0:
            print(setup_line(self), flush=True)
            if self.resume_from is not None:
                print(f"[{self.cfg.name}] resumed from {self.resume_from} at step {self.step}", flush=True)

    # ------------------------------------------------------------------------------------------ method hooks
    def micro_batches(self) -> list[dict[str, torch.Tensor]]:
        """The micro-batches of one optimizer step: every rank draws the same global micro-batch and keeps its own
        slice of it."""
        m = self.cfg.micro_batch_size
        batches = []
        for _ in range(self.backend.accum):
            idx = self.sampler.next_indices(m * self.world)[self.rank * m: (self.rank + 1) * m]
            batches.append(collate_sft([self.train_examples[i] for i in idx], self.tokenizer.pad_token_id))
        return batches

    def micro_weight(self, batch: dict[str, torch.Tensor]) -> float:
        """Target tokens in a micro-batch: the step's loss is Σ tokens·mean / Σ tokens (accumulation-exact)."""
        return float((batch["labels"][:, 1:] >= 0).sum())

    def loss_terms(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def extra_validation(self) -> dict[str, float]:
        return {}

    def method_state(self) -> dict[str, Any]:
        return {}

    def load_method_state(self, state: dict[str, Any]) -> None:
        pass

    # ------------------------------------------------------------------------------------------------ loop
    def train(self) -> None:
        cfg = self.cfg
        bar = progress_bar(self.step, self.max_steps, cfg.name, enabled=self.rank == 0)
        if self.step == 0 and cfg.eval_at_start and cfg.eval_every_steps:
            self.validate(select=False)  # where the curves start: the init against its teacher
        t_last = time.time()
        while self.step < self.max_steps:
            terms = self.optimizer_step()
            self.step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{terms['loss']:.4f}", refresh=False)
            if self.step % cfg.log_every_steps == 0 or self.step == self.max_steps:
                now = time.time()
                self.metrics.log(self.step, {**terms, "lr": self.backend.lr,
                                             "sec_per_step": (now - t_last) / cfg.log_every_steps})
                t_last = now
            if (cfg.eval_every_steps and self.step % cfg.eval_every_steps == 0) or self.step == self.max_steps:
                self.validate()
            saved = self.step % cfg.save_every_steps == 0 or self.step == self.max_steps
            if saved:
                self.save_checkpoint()
            if self.step < self.max_steps and self.preemption is not None and self.preemption.requested():
                if not saved:
                    self.save_checkpoint()
                bar.close()
                stop = Preempted(cfg.name, self.step, self.preemption.signum or signal.SIGUSR2)
                if self.rank == 0:
                    print(f"[{cfg.name}] {stop}", flush=True)
                raise stop
        bar.close()

    def optimizer_step(self) -> dict[str, float]:
        """One optimizer step. Micro-batch i of rank r gets weight w_ri·W / Σ w (W ranks, Σ over all ranks), so the
        rank-averaged gradient equals the gradient of the global token mean (accumulation- and rank-exact)."""
        batches = self.micro_batches()
        weights = [self.micro_weight(b) for b in batches]
        (total,) = dist.all_reduce_sum([sum(weights)])
        total = total or 1.0
        sums: dict[str, float] = defaultdict(float)
        for batch, w in zip(batches, weights, strict=True):
            terms = self.loss_terms(dist.to_device(batch, self.backend.device))
            check_finite(terms, self.cfg.name, self.step + 1)
            self.backend.backward(terms["loss"] * (w * self.world / total))
            for k, v in terms.items():
                sums[k] += float(v.detach()) * w / total
        grad_norm = self.backend.step()
        keys = sorted(sums)
        out = dict(zip(keys, dist.all_reduce_sum([sums[k] for k in keys]), strict=True))
        if grad_norm is not None:
            out["grad_norm"] = grad_norm
        return out

    # ------------------------------------------------------------------------------------------ validation
    def validate(self, select: bool = True) -> dict[str, float]:
        """Every rank takes part (the work is sharded) and gets the same metrics; rank 0 logs them. With `select`,
        a model better than the best so far by `select_by` is exported as `best`."""
        cfg = self.cfg
        with self.backend.compute():
            metrics = {"val_loss": validation_loss(self.student, self.valid_examples, self.tokenizer.pad_token_id,
                                                   cfg.micro_batch_size, self.backend.device)}
        if cfg.eval_prompts:
            with self.backend.generating():
                preds = validation_generations(self.student, self.tokenizer, self.valid_examples, seed=cfg.seed,
                                               max_new_tokens=cfg.max_new_tokens, batch_size=16,
                                               device=self.backend.device, synced=self.backend.lockstep)
            metrics.update({f"val_{k}": v for k, v in score(preds, [e.row for e in self.valid_examples]).items()})
            self.metrics.samples(self.step, [e.row for e in self.valid_examples], preds)
        metrics.update(self.extra_validation())
        self.metrics.log(self.step, metrics, kind="eval")
        if select and self.best.improves(metrics):
            self.checkpoints.export(self.out / "best", extra={"step": self.step, "select_by": cfg.select_by,
                                                              **metrics})
        return metrics

    # ---------------------------------------------------------------------------------------- checkpoints
    def save_checkpoint(self) -> None:
        self.checkpoints.save(self.step, {"step": self.step, "best": self.best.best, "config": config_fingerprint(
            self.cfg), "sampler": self.sampler.state_dict(), "method": self.method_state()})

    def restore(self, directory: Path) -> None:
        state = self.checkpoints.restore(directory)
        self.step, self.best.best = state["step"], state["best"]
        self.sampler.load_state_dict(state["sampler"])
        self.load_method_state(state["method"])
        self.metrics.truncate_after(self.step)

    def finish(self) -> Path:
        final = self.checkpoints.hand_off(self.out, self.cfg.select_by, self.step)
        self.metrics.close()
        if self.rank == 0:
            print(f"[{self.cfg.name}] final model: {final}", flush=True)
        return final
