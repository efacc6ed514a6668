"""MiniLLM update-cycle throughput: takd vs TRL's MiniLLMTrainer (trl.experimental.minillm), CPU, matched settings.

    # TRL is a benchmark-only dependency (1.14.2 is its last release with MiniLLMTrainer), in its own environment:
    python -m venv /tmp/trlv && /tmp/trlv/bin/pip install torch==2.13.0
    /tmp/trlv/bin/pip install trl==1.14.2 transformers==5.23.0 datasets accelerate pyyaml rouge-score pandas submitit
    PYTHONPATH=. /tmp/trlv/bin/python benchmarks/vs_trl.py [--cycles 2] [--repeats 3]

One update cycle = roll out B prompts × T new tokens, then E passes over them in micro-batches of M (B·E/M
optimizer steps). Both sides use the same random-init OPT student and teacher (GPT-2 vocabulary when the BPE files
are available, else the built-in one), the same prompts, B, T, M, E (TRL: num_iterations), the single-step
reverse-KL term, no PT loss, γ = 0.95 with length normalisation, sampling at temperature 1 with no top-k/top-p,
fp32. E defaults to 1 because TRL 1.14.2's MiniLLMTrainer fails with num_iterations > 1 ("Trying to backward
through the graph a second time": its reverse-KL advantage keeps the graph and is written into the reused batch).
TRL samples from the student only, so takd is timed at α = 0 (same sampling) and at its default α = 0.2
(teacher-mixed: one more teacher forward per token), without its logging-only student rollout (TRL has none).
One untimed warm-up run of each precedes the timed ones. Runs alternate takd/TRL within each repeat; min/median/max of
the per-repeat throughput are reported with the ratio of medians.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import OPTConfig, OPTForCausalLM

from takd.data.builtin import generate_split
from takd.data.rows import format_prompt
from takd.paths import gpt2_bpe_dir

HERE = Path(__file__).resolve().parent


def tokenizer():
    from takd.data.tokenizers import gpt2_bpe
    from takd.models.loading import load_tokenizer_for

    return gpt2_bpe(gpt2_bpe_dir()) if gpt2_bpe_dir() else load_tokenizer_for("tiny-s")


def make_model(tok, hidden: int, layers: int, seed: int, out: Path) -> Path:
    torch.manual_seed(seed)
    cfg = OPTConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=hidden // 32,
                    ffn_dim=4 * hidden, word_embed_proj_dim=hidden, max_position_embeddings=512, dropout=0.0,
                    pad_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    OPTForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def takd_cycle_time(student: Path, teacher: Path, work: Path, args, alpha: float) -> float:
    from takd.train.config import stage_config
    from takd.train.minillm.trainer import MiniLLMTrainer

    cfg = stage_config("minillm", name="bench", student=str(student), teacher=str(teacher),
                       output_dir=str(work / f"takd-{alpha}-{time.time_ns()}"), max_steps=10**6,
                       micro_batch_size=args.micro, batch_size=args.micro, max_new_tokens=args.tokens,
                       max_prompt_tokens=256, eval_prompts=0, tensorboard=False, seed=1)
    m = cfg.minillm
    m.num_rollouts, m.rollout_batch_size, m.ppo_epochs, m.pt_loss = args.batch, args.batch, args.epochs, "none"
    m.alpha = alpha
    m.log_student_rev_kl = False  # logging-only extra rollout: TRL has none
    trainer = MiniLLMTrainer(cfg)
    trainer.setup()
    steps = args.cycles * args.batch * args.epochs // args.micro
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.optimizer_step()
    return time.perf_counter() - t0


def trl_cycle_time(student: Path, teacher: Path, tok, prompts: list[str], work: Path, args) -> float:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl.experimental.minillm import MiniLLMConfig, MiniLLMTrainer

    class Clock(TrainerCallback):
        start = end = 0.0

        def on_train_begin(self, *a, **k):
            Clock.start = time.perf_counter()

        def on_train_end(self, *a, **k):
            Clock.end = time.perf_counter()

    steps = args.cycles * args.batch * args.epochs // args.micro
    cfg = MiniLLMConfig(output_dir=str(work / f"trl-{time.time_ns()}"), per_device_train_batch_size=args.micro,
                        gradient_accumulation_steps=1, steps_per_generation=args.batch // args.micro,
                        num_generations=1, num_iterations=args.epochs, max_completion_length=args.tokens,
                        max_steps=steps,
                        learning_rate=5e-6, use_cpu=True, bf16=False, fp16=False, report_to=[], save_strategy="no",
                        logging_steps=10**6, temperature=1.0, top_k=0, top_p=1.0, beta=0.0, gamma=0.95,
                        length_normalization=True, single_step_decomposition=True, seed=1,
                        dataloader_num_workers=0)
    trainer = MiniLLMTrainer(model=AutoModelForCausalLM.from_pretrained(student),
                             teacher_model=AutoModelForCausalLM.from_pretrained(teacher), args=cfg,
                             train_dataset=Dataset.from_dict({"prompt": prompts}), processing_class=tok,
                             callbacks=[Clock()])
    trainer.train()
    return Clock.end - Clock.start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16, help="B: prompts per rollout")
    ap.add_argument("--tokens", type=int, default=32, help="T: new tokens per response")
    ap.add_argument("--micro", type=int, default=8, help="M: sequences per micro-batch")
    ap.add_argument("--epochs", type=int, default=1, help="E: PPO epochs per rollout (TRL: num_iterations)")
    ap.add_argument("--cycles", type=int, default=2, help="update cycles per timed run")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(2)
    import trl

    from takd.models.loading import quiet_transformers

    quiet_transformers()
    work = Path(tempfile.mkdtemp(prefix="takd-vs-trl-"))
    tok = tokenizer()
    student = make_model(tok, 128, 2, 0, work / "student")
    teacher = make_model(tok, 256, 4, 1, work / "teacher")
    prompts = [format_prompt(r) for r in generate_split("train", n=args.batch * args.cycles * args.epochs)]
    tokens = args.cycles * args.batch * args.tokens  # nominal: random-init models almost never emit EOS
    rates: dict[str, list[float]] = {"takd α=0": [], "takd α=0.2": [], "TRL": []}
    warm = argparse.Namespace(**{**vars(args), "cycles": 1})
    takd_cycle_time(student, teacher, work, warm, 0.2)  # untimed warm-up of both code paths
    trl_cycle_time(student, teacher, tok, prompts, work, warm)
    for _ in range(args.repeats):  # A/B alternation
        rates["takd α=0"].append(tokens / takd_cycle_time(student, teacher, work, args, 0.0))
        rates["TRL"].append(tokens / trl_cycle_time(student, teacher, tok, prompts, work, args))
        rates["takd α=0.2"].append(tokens / takd_cycle_time(student, teacher, work, args, 0.2))
    med = {k: statistics.median(v) for k, v in rates.items()}
    rows = [f"| {k} | {min(v):.1f} | {med[k]:.1f} | {max(v):.1f} | {med[k] / med['TRL']:.2f} |"
            for k, v in rates.items()]
    block = "\n".join([
        f"\n## MiniLLM update cycle: takd vs TRL {trl.__version__} MiniLLMTrainer — {dt.date.today()} — "
        f"{platform.node()} ({platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads)",
        f"Command: `PYTHONPATH=. python benchmarks/vs_trl.py --batch {args.batch} --tokens {args.tokens} "
        f"--micro {args.micro} --epochs {args.epochs} --cycles {args.cycles} --repeats {args.repeats}`. "
        f"Student OPT 128×2, teacher OPT 256×4, "
        f"vocabulary {len(tok)}; B={args.batch} prompts × T={args.tokens} new tokens, micro-batch {args.micro}, "
        f"{args.epochs} PPO epoch(s) ({args.batch * args.epochs // args.micro} optimizer steps per cycle), "
        f"{args.cycles} cycles per run, "
        f"{args.repeats} interleaved repeats. Rollout tokens per second of wall time (generation + updates):", "",
        "| trainer | min | median | max | ratio to TRL (medians) |", "|---|---|---|---|---|", *rows, ""])
    print(block)
    with open(HERE / "RESULTS.md", "a") as fh:
        fh.write(block)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
