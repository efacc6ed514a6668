"""The training loop every method shares, and the supervised methods (SFT, word-level KD, SeqKD).

`Trainer.run()` reads top to bottom: set up (seed, tokenizer, models, data, optimizer, schedule, resume),
then for each optimizer step: gather the step's micro-batches, compute each one's loss terms, backpropagate
with token-count weights, clip, step; log, validate, checkpoint. A method only says what a micro-batch is
(`micro_batches`) and what its loss is (`loss_terms`); the math lives in `takd.losses` / `takd.minillm`.

Resumability: a checkpoint holds HF weights + tokenizer + optimizer, scheduler, RNG, data position, step, best
metric. Re-running the same command resumes from the newest complete checkpoint and continues the same
trajectory (CPU: bit-identical up to float reassociation). A stage whose `final/` is complete is not re-run.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from takd import checkpoint as ckpt
from takd import config as cfglib
from takd import distributed
from takd import engine as engine_lib
from takd.data import EpochSampler, Example, collate_sft, encode_rows, load_rows, references, write_jsonl
from takd.evaluate import generate, score
from takd.losses import divergence, masked_mean, shift_for_next_token, token_cross_entropy
from takd.models import base_model_name, load_model, load_tokenizer_for, model_dir, write_model_meta
from takd.stage import StageConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def lr_factor(step: int, cfg_optim, total_steps: int) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based): linear warmup, then constant or cosine.

    warmup: (step+1)/warmup_steps; cosine: min_lr + (lr − min_lr)·½(1 + cos(π·progress)), progress ∈ [0, 1].
    """
    if step < cfg_optim.warmup_steps:
        return (step + 1) / cfg_optim.warmup_steps
    if cfg_optim.schedule == "constant":
        return 1.0
    progress = (step - cfg_optim.warmup_steps) / max(1, total_steps - cfg_optim.warmup_steps)
    lr = cfg_optim.min_lr + (cfg_optim.lr - cfg_optim.min_lr) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return lr / cfg_optim.lr


def check_same_tokenizer(student_tok, teacher_tok, student: str, teacher: str) -> None:
    """Teacher and student must share a vocabulary (token-level losses compare distributions per id)."""
    if student_tok.get_vocab() != teacher_tok.get_vocab() or student_tok.eos_token_id != teacher_tok.eos_token_id:
        raise cfglib.ConfigError(
            f"tokenizers differ: student {student} ({len(student_tok)} tokens, eos {student_tok.eos_token_id}) vs "
            f"teacher {teacher} ({len(teacher_tok)} tokens, eos {teacher_tok.eos_token_id}); every model of a "
            "chain must use the same tokenizer (pick one model family)")


@torch.no_grad()
def response_cross_entropy_sums(model, examples: list[Example], pad_id: int, batch_size: int,
                                device: torch.device | str = "cpu", n_real: int | None = None) -> tuple[float, float]:
    """(Σ token CE, token count) over the gold responses of the first `n_real` examples (the rest are padding that
    keeps ranks in lockstep). Leaves `model` in train mode if it was."""
    was_training = model.training
    model.eval()
    n_real = len(examples) if n_real is None else n_real
    num, den = 0.0, 0.0
    for i in range(0, len(examples), batch_size):
        b = distributed.to_device(collate_sft(examples[i: i + batch_size], pad_id), device)
        out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
        logits, labels = shift_for_next_token(out.logits, b["labels"])
        labels[max(0, n_real - i):] = -100  # padding rows count for nothing
        num += float(token_cross_entropy(logits, labels).sum())
        den += float((labels >= 0).sum())
    model.train(was_training)
    return num, den


def response_cross_entropy(model, examples: list[Example], pad_id: int, batch_size: int,
                           device: torch.device | str = "cpu") -> float:
    """Token-mean CE of the gold responses (the init-selection criterion, reference §1)."""
    num, den = response_cross_entropy_sums(model, examples, pad_id, batch_size, device)
    return num / max(den, 1.0)


class Trainer:
    """Shared loop. Subclasses define `loss_terms` (and optionally `micro_batches`, `build_train_examples`)."""

    needs_teacher = False

    def __init__(self, cfg: StageConfig):
        self.cfg = cfg
        self.out = cfg.out
        self.ckpt_root = self.out / "checkpoints"
        self.metrics_file = self.out / "metrics.jsonl"
        self.step = 0
        self.best: float | None = None
        self.writer = None

    # ------------------------------------------------------------------------------------------------ setup
    def setup(self) -> None:
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(cfg.seed)
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.use_engine = cfg.deepspeed.enabled or self.world > 1
        self.zero3 = self.use_engine and engine_lib.is_zero3(cfg)
        self.teacher_sharded = self.use_engine and cfg.deepspeed.teacher_placement == "zero3"
        # a forward of a sharded model is a collective: every rank must run every forward, in the same order
        self.lockstep = self.zero3 or self.teacher_sharded
        if cfg.deepspeed.teacher_placement == "zero3" and not self.use_engine:
            raise cfglib.ConfigError("deepspeed.teacher_placement=zero3 needs the DeepSpeed path: set "
                                     "deepspeed.enabled=true or run several processes")
        ds_config = engine_lib.deepspeed_config(cfg) if self.use_engine else None  # bad settings fail before any work
        if self.use_engine:
            engine_lib.init_process_group()
        if self.rank == 0:  # tiny models are built on first use: once, by one process, never inside zero.Init
            for name in filter(None, (cfg.student, cfg.teacher if self.needs_teacher else None)):
                model_dir(name)
        engine_lib.barrier()
        resume_from = ckpt.latest_checkpoint(self.ckpt_root)
        self.tokenizer = load_tokenizer_for(cfg.student)
        self.device = distributed.device()
        with engine_lib.partitioned_loading(ds_config):  # a no-op unless ZeRO-3
            self.student = load_model(str(resume_from) if resume_from else cfg.student, DTYPES[cfg.dtype])
        if not self.zero3:  # zero.Init already placed the shards
            self.student.to(self.device)
        self.teacher = self.load_teacher() if (self.needs_teacher and cfg.teacher) else None
        self.train_examples = self.build_train_examples()
        self.valid_examples = encode_rows(load_rows(cfg.dataset, "valid"), self.tokenizer, cfg.max_prompt_tokens,
                                          cfg.max_new_tokens)[: cfg.eval_prompts]
        self.sampler = EpochSampler(len(self.train_examples), seed=cfg.seed)
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(self.student.parameters(), lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps,
                                           weight_decay=o.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, o, cfg.max_steps))
        self.engine = engine_lib.build_engine(self.student, self.optimizer, self.scheduler, cfg) \
            if self.use_engine else None
        # Training forwards go through the engine: ZeRO-3 counts accumulation micro-steps in its forward, and
        # without that count each micro-batch's gradient would replace the previous one instead of adding to it.
        self.policy = self.engine if self.engine is not None else self.student
        if resume_from:
            self.restore(resume_from)
        self.student.train()
        self.log_setup(resume_from)

    def load_teacher(self):
        cfg = self.cfg
        teacher_tok = load_tokenizer_for(cfg.teacher)
        check_same_tokenizer(self.tokenizer, teacher_tok, cfg.student, cfg.teacher)
        if not self.teacher_sharded:
            return load_model(cfg.teacher, DTYPES[cfg.dtype]).to(self.device).eval().requires_grad_(False)
        with engine_lib.partitioned_loading(engine_lib.teacher_config(cfg)):
            teacher = load_model(cfg.teacher, DTYPES[cfg.dtype]).requires_grad_(False)
        self.teacher_engine = engine_lib.build_teacher_engine(teacher, cfg)  # holds the shards and gather hooks
        return teacher.eval()

    def build_train_examples(self) -> list[Example]:
        cfg = self.cfg
        return encode_rows(load_rows(cfg.dataset, "train", seed=0), self.tokenizer, cfg.max_prompt_tokens,
                           cfg.max_new_tokens)

    def log_setup(self, resume_from: Path | None) -> None:
        if self.rank != 0:
            return
        cfg = self.cfg
        n_params = engine_lib.parameter_count(self.student)
        seqs = cfg.micro_batch_size * cfg.grad_accum_steps * self.world
        ds = cfg.deepspeed
        engine = (f", DeepSpeed ZeRO-{ds.zero_stage}{' (optimizer offloaded)' if ds.offload_optimizer else ''} on "
                  f"{self.world} process(es)") if self.engine else ""
        teacher = f", teacher {cfg.teacher}{' (ZeRO-3 sharded)' if self.teacher_sharded else ''}" \
            if self.teacher is not None else ""
        msg = (f"[{cfg.name}] {cfg.method}: student {cfg.student} ({n_params / 1e6:.2f}M params){engine}"
               f"{teacher}; {len(self.train_examples)} "
               f"train examples, {len(self.valid_examples)} valid; {seqs} sequences/step "
               f"({cfg.micro_batch_size}x{cfg.grad_accum_steps}x{self.world}), {cfg.max_steps} steps -> {self.out}")
        print(msg + (f"\n[{cfg.name}] resumed from {resume_from} at step {self.step}" if resume_from else ""),
              flush=True)

    # --------------------------------------------------------------------------------------- method hooks
    def micro_batches(self) -> list[dict[str, torch.Tensor]]:
        """The micro-batches of one optimizer step."""
        cfg = self.cfg
        batches = []
        for _ in range(cfg.grad_accum_steps):
            # every rank draws the same global micro-batch and keeps its own slice of it
            idx = self.sampler.next_indices(cfg.micro_batch_size * self.world)
            idx = idx[self.rank * cfg.micro_batch_size: (self.rank + 1) * cfg.micro_batch_size]
            batches.append(collate_sft([self.train_examples[i] for i in idx], self.tokenizer.pad_token_id))
        return batches

    def micro_weight(self, batch: dict[str, torch.Tensor]) -> float:
        """Target tokens in a micro-batch: the step's loss is Σ tokens·mean / Σ tokens (accumulation-exact)."""
        return float((batch["labels"][:, 1:] >= 0).sum())

    def loss_terms(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------------ loop
    def run(self) -> Path:
        final = self.out / "final"
        if ckpt.is_complete(final):
            print(f"[{self.cfg.name}] already complete: {final}", flush=True)
            return final
        self.setup()
        self.train()
        return self.finish()

    def train(self) -> None:
        cfg = self.cfg
        bar = _progress(self.step, cfg.max_steps, cfg.name, enabled=self.rank == 0)
        t_last = time.time()
        while self.step < cfg.max_steps:
            terms = self.optimizer_step()
            self.step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{terms['loss']:.4f}", refresh=False)
            if self.step % cfg.log_every_steps == 0 or self.step == cfg.max_steps:
                now = time.time()
                self.log_metrics({**terms, "lr": self.scheduler.get_last_lr()[0],
                                  "sec_per_step": (now - t_last) / cfg.log_every_steps})
                t_last = now
            if (cfg.eval_every_steps and self.step % cfg.eval_every_steps == 0) or self.step == cfg.max_steps:
                self.validate()
            if self.step % cfg.save_every_steps == 0 or self.step == cfg.max_steps:
                self.save_checkpoint()
        bar.close()

    def optimizer_step(self) -> dict[str, float]:
        """One optimizer step. Micro-batch i of rank r gets weight w_ri·W / Σ w (W ranks, Σ over all ranks), so the
        rank-averaged gradient equals the gradient of the global token mean (accumulation- and rank-exact)."""
        batches = self.micro_batches()
        weights = [self.micro_weight(b) for b in batches]
        (total,) = engine_lib.all_reduce_sum([sum(weights)])
        total = total or 1.0
        sums: dict[str, float] = defaultdict(float)
        if self.engine is None:
            self.optimizer.zero_grad(set_to_none=True)
        for batch, w in zip(batches, weights, strict=True):
            terms = self.loss_terms(distributed.to_device(batch, self.device))
            scale = w * self.world / total
            if self.engine is None:
                (terms["loss"] * scale).backward()
            else:  # the engine divides by the accumulation steps itself, and averages over ranks
                self.engine.backward(terms["loss"] * scale * self.cfg.grad_accum_steps)
                self.engine.step()  # optimizer + schedule + clipping happen at the accumulation boundary
            for k, v in terms.items():
                sums[k] += float(v.detach()) * w / total
        if self.engine is None:
            if self.cfg.optim.grad_clip_norm > 0:
                sums["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.student.parameters(),
                                                                         self.cfg.optim.grad_clip_norm))
            self.optimizer.step()
            self.scheduler.step()
        elif self.engine.get_global_grad_norm() is not None:
            sums["grad_norm"] = float(self.engine.get_global_grad_norm())
        keys = sorted(k for k in sums if k != "grad_norm")
        for k, v in zip(keys, engine_lib.all_reduce_sum([sums[k] for k in keys]), strict=True):
            sums[k] = v
        return dict(sums)

    # ------------------------------------------------------------------------------------------ validation
    def my_share(self, items: list) -> tuple[list, int]:
        """This rank's share of validation work, padded so every rank runs the same batches (see padded_shard)."""
        return distributed.padded_shard(items, self.rank, self.world)

    def validation_loss(self) -> float:
        """Token-mean gold-response CE over the validation set; each rank scores its share, sums all-reduced."""
        shard, real = self.my_share(self.valid_examples)
        num, den = response_cross_entropy_sums(self.student, shard, self.tokenizer.pad_token_id,
                                               self.cfg.micro_batch_size, self.device, n_real=real)
        num, den = engine_lib.all_reduce_sum([num, den])
        return num / max(den, 1.0)

    def validation_generations(self) -> list[str]:
        """One sample per validation prompt; ranks generate their shares (synchronised under ZeRO-3), all get all."""
        cfg = self.cfg
        shard, real = self.my_share(self.valid_examples)
        with self.generating():
            preds = generate(self.student, self.tokenizer, shard, seed=cfg.seed + self.rank,
                             max_new_tokens=cfg.max_new_tokens, no_repeat_ngram_size=0,
                             synced_gpus=self.lockstep)[:real]
        return [p for part in engine_lib.all_gather_objects(preds) for p in part]

    def generating(self):
        """Context for student decoding: under ZeRO-3 with gather_for_generation, the weights gathered once."""
        return engine_lib.gathered_for_generation(self.engine, self.cfg.deepspeed.gather_for_generation)

    def validate(self) -> dict[str, float]:
        """Every rank takes part (the work is sharded) and returns the same metrics; rank 0 logs them."""
        cfg = self.cfg
        metrics = {"val_loss": self.validation_loss()}
        if cfg.eval_prompts:
            preds = self.validation_generations()
            metrics.update({f"val_{k}": v for k, v in score(preds, self.valid_examples).items()})
        metrics.update(self.extra_validation())
        self.log_metrics(metrics, kind="eval")
        self.maybe_keep_best(metrics)
        return metrics

    def extra_validation(self) -> dict[str, float]:
        return {}

    def maybe_keep_best(self, metrics: dict[str, float]) -> None:
        sel = self.cfg.select_by
        if sel == "last":
            return
        value = metrics["val_rouge_l"] if sel == "rouge_l" else -metrics["val_loss"]
        if self.best is None or value > self.best:
            self.best = value
            self.export(self.out / "best", extra={"step": self.step, "select_by": sel, **metrics})

    # ---------------------------------------------------------------------------------------- checkpoints
    def export(self, directory: Path, extra: dict[str, Any] | None = None, verify: bool = False) -> None:
        """The current weights as an HF directory, written atomically by rank 0. Collective: under ZeRO-3 every
        rank contributes its shards. verify: load it back before marking it complete."""
        state = engine_lib.consolidated_state_dict(self.engine, self.student)
        if self.rank == 0:
            with ckpt.atomic_directory(directory) as d:
                self.save_hf(d, state, extra)
                if verify:
                    load_model(str(d))  # a stage never hands off weights that do not load
        engine_lib.barrier()

    def save_hf(self, directory: Path, state_dict: dict[str, torch.Tensor] | None = None,
                extra: dict[str, Any] | None = None) -> None:
        self.student.save_pretrained(directory, state_dict=state_dict)
        self.tokenizer.save_pretrained(directory)
        write_model_meta(directory, base=base_model_name(self.cfg.student), stage=self.cfg.name, method=self.cfg.method,
                         **(extra or {}))

    def trainer_state(self) -> dict[str, Any]:
        state = {"step": self.step, "best": self.best, "sampler": self.sampler.state_dict(), "rng": ckpt.rng_state(),
                 "extra": self.extra_state()}
        if self.engine is None:  # the engine saves optimizer and schedule in its own collective checkpoint
            state.update(optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict())
        return state

    def save_checkpoint(self) -> None:
        final = ckpt.step_dir(self.ckpt_root, self.step)
        if self.engine is None:
            with ckpt.atomic_directory(final) as d:
                self.save_hf(d, extra={"step": self.step})
                ckpt.save_trainer_state(d, self.trainer_state())
        else:
            # Collective: every rank writes its optimizer (and, under ZeRO-3, weight) shards and its own RNG state
            # into one temporary directory; rank 0 adds the gathered HF weights and the trainer state, then marks it
            # complete and renames it into place. A crash before the rename leaves only the temporary directory.
            tmp = self.ckpt_root / f".tmp-{final.name}"
            if self.rank == 0:
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
            engine_lib.barrier()
            self.engine.save_checkpoint(str(tmp / "ds"), tag="state", save_latest=False)
            torch.save(ckpt.rng_state(), ckpt.rank_rng_file(tmp, self.rank))
            state = engine_lib.consolidated_state_dict(self.engine, self.student)
            engine_lib.barrier()
            if self.rank == 0:
                self.save_hf(tmp, state, extra={"step": self.step})
                ckpt.save_trainer_state(tmp, self.trainer_state())
                ckpt.commit_directory(tmp, final)
            engine_lib.barrier()
        if self.rank == 0:
            ckpt.prune(self.ckpt_root, self.cfg.keep_checkpoints)

    def extra_state(self) -> dict[str, Any]:
        return {}

    def restore(self, directory: Path) -> None:
        state = ckpt.load_trainer_state(directory)
        self.step, self.best = state["step"], state["best"]
        if self.engine is None:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        else:
            self.engine.load_checkpoint(str(directory / "ds"), tag="state")
        self.sampler.load_state_dict(state["sampler"])
        own_rng = ckpt.rank_rng_file(directory, self.rank)
        ckpt.set_rng_state(torch.load(own_rng, weights_only=False) if own_rng.is_file() else state["rng"])
        self.restore_extra(state.get("extra", {}))
        self._truncate_metrics(after_step=self.step)

    def restore_extra(self, extra: dict[str, Any]) -> None:
        pass

    def finish(self) -> Path:
        """Write `final/`: the best checkpoint by `select_by` (or the last weights), verified loadable."""
        final = self.out / "final"
        best = self.out / "best"
        if self.cfg.select_by != "last" and ckpt.is_complete(best):
            if self.rank == 0:
                with ckpt.atomic_directory(final) as d:
                    for f in best.iterdir():
                        if f.name != ckpt.COMPLETE:
                            shutil.copy2(f, d / f.name)
                    load_model(str(d))  # a stage never hands off weights that do not load
            engine_lib.barrier()
        else:
            self.export(final, extra={"step": self.step}, verify=True)
        if self.writer is not None:
            self.writer.close()
        if self.rank == 0:
            print(f"[{self.cfg.name}] final model: {final}", flush=True)
        return final

    # ---------------------------------------------------------------------------------------------- logging
    def log_metrics(self, metrics: dict[str, float], kind: str = "train") -> None:
        if self.rank != 0:
            return
        row = {"step": self.step, "kind": kind, **{k: float(v) for k, v in metrics.items()}}
        with open(self.metrics_file, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        if kind == "eval":
            shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
            print(f"[{self.cfg.name}] step {self.step} eval: {shown}", flush=True)
        if self.cfg.tensorboard:
            if self.writer is None:
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(str(self.out / "tb"))
            for k, v in metrics.items():
                self.writer.add_scalar(f"{kind}/{k}", v, self.step)

    def _truncate_metrics(self, after_step: int) -> None:
        """Drop rows logged after the checkpoint we resume from (they will be logged again)."""
        if self.rank != 0 or not self.metrics_file.is_file():
            return
        rows = [json.loads(line) for line in self.metrics_file.read_text().splitlines() if line.strip()]
        kept = [r for r in rows if r["step"] <= after_step]
        self.metrics_file.write_text("".join(json.dumps(r) + "\n" for r in kept))


def _progress(initial: int, total: int, name: str, enabled: bool = True):
    from tqdm import tqdm

    interactive = sys.stderr.isatty()
    return tqdm(total=total, initial=initial, desc=name, file=sys.stderr, dynamic_ncols=True, disable=not enabled,
                mininterval=0.5 if interactive else 30.0)


# ==================================================================================== supervised methods


class SFTTrainer(Trainer):
    """SFT w/o KD: response-only cross-entropy (reference §5)."""

    def loss_terms(self, batch):
        out = self.policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        logits, labels = shift_for_next_token(out.logits, batch["labels"])
        ce = masked_mean(token_cross_entropy(logits, labels), labels >= 0)
        return {"loss": ce, "ce": ce}


class KDTrainer(Trainer):
    """Word-level KD on gold responses: (1 − r)·CE + r·D(teacher ‖ student), teacher-forced (reference §5).

    With D = fkl this has the reference's gradient; the reference logs −Σ p log q (= fkl + H(p)), we log fkl.
    """

    needs_teacher = True

    def loss_terms(self, batch):
        kd = self.cfg.kd
        out = self.policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        with torch.no_grad():
            t_logits = self.teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logits, labels = shift_for_next_token(out.logits, batch["labels"])
        mask = labels >= 0
        ce = masked_mean(token_cross_entropy(logits, labels), mask)
        div = divergence(logits, t_logits[:, :-1], mask, kd.divergence, **kd.params())
        return {"loss": (1 - kd.kd_ratio) * ce + kd.kd_ratio * div, "ce": ce, kd.divergence: div}


class SeqKDTrainer(KDTrainer):
    """SeqKD: train on one teacher sample per training prompt, kept in `<output_dir>/seqkd_data.jsonl`."""

    def build_train_examples(self) -> list[Example]:
        cfg = self.cfg
        path = self.out / "seqkd_data.jsonl"
        if not path.is_file():
            self.generate_teacher_data(path)
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return encode_rows(rows, self.tokenizer, cfg.max_prompt_tokens, cfg.max_new_tokens)

    def generate_teacher_data(self, path: Path) -> None:
        cfg, s = self.cfg, self.cfg.seqkd.sampling
        rows = load_rows(cfg.dataset, "train", seed=0)
        prompts = encode_rows(rows, self.tokenizer, cfg.max_prompt_tokens, cfg.max_new_tokens, with_response=False)
        if self.rank == 0:
            print(f"[{cfg.name}] SeqKD: teacher {cfg.teacher} samples {len(prompts)} responses on {self.world} "
                  f"process(es) -> {path}", flush=True)
        shard, real = self.my_share(prompts)
        outs = generate(self.teacher, self.tokenizer, shard, seed=cfg.seed + self.rank,
                        max_new_tokens=cfg.max_new_tokens, batch_size=cfg.seqkd.generation_batch_size,
                        temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, progress=self.rank == 0,
                        synced_gpus=self.lockstep)[:real]
        outs = [o for part in engine_lib.all_gather_objects(outs) for o in part]
        if self.rank == 0:
            tmp = path.with_suffix(".jsonl.tmp")
            write_jsonl(tmp, [{**e.row, "gold_output": references(e.row)[0], "output": o}
                              for e, o in zip(prompts, outs, strict=True)])
            tmp.replace(path)  # complete or absent: a killed job regenerates
        engine_lib.barrier()

    def loss_terms(self, batch):
        if self.cfg.seqkd.loss == "kd":
            return super().loss_terms(batch)
        return SFTTrainer.loss_terms(self, batch)


TRAINERS: dict[str, type[Trainer]] = {"sft": SFTTrainer, "kd": KDTrainer, "seqkd": SeqKDTrainer}
