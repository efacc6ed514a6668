"""On-policy distillation throughput and memory: takd's MiniLLM vs TRL's DistillationTrainer (current) and TRL
1.14.2's MiniLLMTrainer (its last release), CPU, matched settings, interleaved in one run.

    # TRL is a benchmark-only dependency, in its own environment (two TRL versions: the old one by --target)
    python -m venv /tmp/trlv && /tmp/trlv/bin/pip install torch==2.13.0
    /tmp/trlv/bin/pip install trl==1.16.0 datasets accelerate pyyaml rouge-score pandas submitit
    /tmp/trlv/bin/pip install --no-deps --target /tmp/trl1142 trl==1.14.2
    PYTHONPATH=. /tmp/trlv/bin/python benchmarks/vs_trl.py [--repeats 3] [--old-trl /tmp/trl1142]

One update cycle = roll out B prompts × T new tokens, then train on them in micro-batches of M (B/M forward-backward
passes). Every trainer gets the same random-init OPT student and teacher, the same prompts, B, T, M, one pass over
each rollout (TRL 1.14.2's MiniLLMTrainer fails with num_iterations > 1; DistillationTrainer is one pass by
design), fp32, no gradient checkpointing, sampling at temperature 1 with no top-k/top-p, and generation in one
batch of B:
- takd MiniLLM: single-step reverse KL + policy gradient, γ = 0.95 with length normalisation, no PT loss, at its
  default α = 0.2 (teacher-mixed sampling: one more teacher forward per token) and at α = 0 (student-only sampling
  like the others), without its logging-only student rollout; B/M optimizer steps per cycle.
- TRL DistillationTrainer (trl >= 1.11 stable; beta = 1.0: reverse KL, TRL's convention 0 = forward KL), chunked
  divergence loss, per_device_train_batch_size M with gradient accumulation B/M so it generates B at once (one
  optimizer step per cycle: the same forward-backward work).
- TRL 1.14.2 MiniLLMTrainer (trl.experimental.minillm): num_generations 1, steps_per_generation B/M, single-step
  decomposition, γ = 0.95, length normalisation.
Two sizes: "tiny" (student OPT 128×2, teacher 256×4, GPT-2's 50,257-token vocabulary) and "vocab" (student OPT
64×2, teacher 128×2, a 128,256-token vocabulary: the vocabulary dominates every forward and loss; a word-level
tokenizer of that size so every sampled id decodes). Each measurement runs in its own process (the two TRL versions
cannot share one) after an untimed warm-up: rollout tokens per second of the timed training loop (B × T per cycle,
nominal: random-init models almost never stop early), peak RSS of the training loop above the process's RSS
with the models loaded, and the timed loop split into generating rollouts (takd: sampling and scoring, its
`roll_out`; TRL: the student's completions, `_generate`) and the rest (teacher forwards, losses, updates).
Runs alternate within each repeat; min/median/max and the ratio of medians are reported.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _results import record

ROOT = Path(__file__).resolve().parent.parent
SIZES = {"tiny": {"student": (128, 2), "teacher": (256, 4), "vocab": 0},
         "vocab": {"student": (64, 2), "teacher": (128, 2), "vocab": 128_256}}
TRAINERS = ("takd α=0.2", "takd α=0", "TRL DistillationTrainer", "TRL 1.14.2 MiniLLMTrainer")


# ------------------------------------------------------------------------------------------------ set-up
def word_tokenizer(size: int, out: Path):
    """A word-level tokenizer of `size` ids (w0, w1, ...; EOS = id 0): every id decodes, whatever is sampled."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"</s>": 0, "<unk>": 1, **{f"w{i}": i for i in range(2, size)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="</s>", unk_token="<unk>")
    fast.save_pretrained(out)
    return fast


def gpt2_tokenizer():
    from takd.data.tokenizers import gpt2_bpe
    from takd.models.loading import load_tokenizer_for
    from takd.paths import gpt2_bpe_dir

    return gpt2_bpe(gpt2_bpe_dir()) if gpt2_bpe_dir() else load_tokenizer_for("tiny-s")


def make_model(tok, vocab: int, hidden: int, layers: int, seed: int, out: Path) -> Path:
    import torch
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(seed)
    cfg = OPTConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=hidden // 32,
                    ffn_dim=4 * hidden, word_embed_proj_dim=hidden, max_position_embeddings=512, dropout=0.0,
                    pad_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    OPTForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def setup(work: Path, size: str, n_prompts: int) -> dict:
    from takd.data.builtin import generate_split
    from takd.data.rows import format_prompt

    spec = SIZES[size]
    d = work / size
    d.mkdir(parents=True)
    tok = word_tokenizer(spec["vocab"], d / "tok") if spec["vocab"] else gpt2_tokenizer()
    vocab = spec["vocab"] or len(tok)
    student = make_model(tok, vocab, *spec["student"], 0, d / "student")
    teacher = make_model(tok, vocab, *spec["teacher"], 1, d / "teacher")
    prompts = [format_prompt(r) for r in generate_split("train", n=n_prompts)]
    (d / "prompts.json").write_text(json.dumps(prompts))
    return {"student": str(student), "teacher": str(teacher), "prompts": str(d / "prompts.json"), "vocab": vocab}


# ------------------------------------------------------------------------------------------------ workers
def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


GENERATING = [0.0]  # seconds spent generating rollouts inside the timed loop


def timed_generation(obj, method: str) -> None:
    """Count the time spent in `obj.method` (the trainer's rollout generation) into GENERATING."""
    plain = getattr(obj, method)

    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return plain(*args, **kwargs)
        finally:
            GENERATING[0] += time.perf_counter() - t0

    setattr(obj, method, wrapper)


def takd_worker(a) -> tuple[float, float]:
    from takd.train.config import stage_config
    from takd.train.minillm.trainer import MiniLLMTrainer

    cfg = stage_config("minillm", name="bench", student=a.student, teacher=a.teacher,
                       output_dir=str(Path(a.work) / f"takd-{time.time_ns()}"), max_steps=10**6,
                       micro_batch_size=a.micro, batch_size=a.micro, max_new_tokens=a.tokens, max_prompt_tokens=256,
                       eval_prompts=0, tensorboard=False, seed=1)
    m = cfg.minillm
    m.num_rollouts, m.rollout_batch_size, m.ppo_epochs, m.pt_loss = a.batch, a.batch, 1, "none"
    m.alpha = a.alpha
    m.log_student_rev_kl = False  # logging-only extra rollout: TRL has none
    trainer = MiniLLMTrainer(cfg)
    trainer.setup()
    timed_generation(trainer.collector, "roll_out")  # sampling and scoring a round's rollouts
    return _timed(lambda: [trainer.optimizer_step() for _ in range(a.cycles * a.batch // a.micro)])


def _trl_clock():
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        start = end = 0.0
        rss = 0.0

        def on_train_begin(self, *args, **kwargs):
            Clock.rss, Clock.start = rss_mb(), time.perf_counter()

        def on_train_end(self, *args, **kwargs):
            Clock.end = time.perf_counter()

    return Clock


def _trl_train(trainer_cls, cfg, a) -> tuple[float, float]:
    """Train a TRL trainer on the benchmark's models and prompts: its training loop's seconds and the RSS before."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    clock = _trl_clock()
    trainer = trainer_cls(model=AutoModelForCausalLM.from_pretrained(a.student),
                          teacher_model=AutoModelForCausalLM.from_pretrained(a.teacher), args=cfg,
                          train_dataset=Dataset.from_dict({"prompt": json.loads(Path(a.prompts).read_text())}),
                          processing_class=AutoTokenizer.from_pretrained(a.student), callbacks=[clock()])
    timed_generation(trainer, "_generate")  # the student's completions
    trainer.train()
    return clock.end - clock.start, clock.rss


def trl_distill_worker(a) -> tuple[float, float]:
    from trl import DistillationConfig, DistillationTrainer

    cfg = DistillationConfig(output_dir=str(Path(a.work) / f"trl-d-{time.time_ns()}"),
                             per_device_train_batch_size=a.micro, gradient_accumulation_steps=a.batch // a.micro,
                             max_steps=a.cycles, max_completion_length=a.tokens, learning_rate=5e-6, use_cpu=True,
                             bf16=False, fp16=False, gradient_checkpointing=False, report_to=[], save_strategy="no",
                             logging_steps=10**6, temperature=1.0, top_k=0, top_p=1.0, beta=1.0, seed=1,
                             disable_dropout=True, dataloader_num_workers=0)
    return _trl_train(DistillationTrainer, cfg, a)


def trl_minillm_worker(a) -> tuple[float, float]:
    from trl.experimental.minillm import MiniLLMConfig, MiniLLMTrainer

    cfg = MiniLLMConfig(output_dir=str(Path(a.work) / f"trl-m-{time.time_ns()}"), per_device_train_batch_size=a.micro,
                        gradient_accumulation_steps=1, steps_per_generation=a.batch // a.micro, num_generations=1,
                        num_iterations=1, max_completion_length=a.tokens, max_steps=a.cycles * a.batch // a.micro,
                        learning_rate=5e-6, use_cpu=True, bf16=False, fp16=False, report_to=[], save_strategy="no",
                        logging_steps=10**6, temperature=1.0, top_k=0, top_p=1.0, beta=0.0, gamma=0.95,
                        length_normalization=True, single_step_decomposition=True, seed=1, dataloader_num_workers=0)
    return _trl_train(MiniLLMTrainer, cfg, a)


def _timed(fn) -> tuple[float, float]:
    before = rss_mb()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0, before


def worker(a) -> None:
    import torch

    torch.set_num_threads(a.threads)
    from takd.models.loading import quiet_transformers

    quiet_transformers()
    fn = {"takd": takd_worker, "trl-distill": trl_distill_worker, "trl-minillm": trl_minillm_worker}[a.worker]
    seconds, rss_before = fn(a)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3  # kB on Linux
    print("RESULT " + json.dumps({"seconds": seconds, "peak_mb": peak, "above_mb": peak - rss_before,
                                  "generating": GENERATING[0]}))


# ------------------------------------------------------------------------------------------------ orchestration
def run_one(trainer: str, setup_: dict, a, cycles: int) -> dict:
    kind, alpha = {"takd α=0.2": ("takd", 0.2), "takd α=0": ("takd", 0.0), "TRL DistillationTrainer":
                   ("trl-distill", 0.0), "TRL 1.14.2 MiniLLMTrainer": ("trl-minillm", 0.0)}[trainer]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    if kind == "trl-minillm":
        env["PYTHONPATH"] = f"{a.old_trl}:{ROOT}"
    cmd = [sys.executable, __file__, "--worker", kind, "--alpha", str(alpha), "--cycles", str(cycles),
           "--batch", str(a.batch), "--tokens", str(a.tokens), "--micro", str(a.micro), "--threads", str(a.threads),
           "--work", a.work, "--student", setup_["student"], "--teacher", setup_["teacher"],
           "--prompts", setup_["prompts"]]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    if out.returncode or line is None:
        raise SystemExit(f"{trainer} failed:\n{out.stderr[-3000:]}")
    res = json.loads(line[len("RESULT "):])
    res["tok_s"] = cycles * a.batch * a.tokens / res["seconds"]
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16, help="B: prompts per rollout")
    ap.add_argument("--tokens", type=int, default=32, help="T: new tokens per response")
    ap.add_argument("--micro", type=int, default=8, help="M: sequences per micro-batch")
    ap.add_argument("--cycles", type=int, default=2, help="update cycles per timed run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sizes", default="tiny,vocab")
    ap.add_argument("--old-trl", default="/tmp/trl1142", help="a --target install of trl==1.14.2")
    ap.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    for k in ("worker", "work", "student", "teacher", "prompts"):
        ap.add_argument(f"--{k}", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--alpha", type=float, default=0.2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return worker(a)
    import torch
    import trl

    a.work = tempfile.mkdtemp(prefix="takd-vs-trl-")
    blocks = []
    for size in a.sizes.split(","):
        s = setup(Path(a.work), size, a.batch * a.cycles)
        for trainer in TRAINERS:  # untimed warm-up of every code path (file caches, lazy imports)
            run_one(trainer, s, a, 1)
        res: dict[str, list[dict]] = {t: [] for t in TRAINERS}
        for r in range(a.repeats):
            for trainer in (TRAINERS if r % 2 == 0 else TRAINERS[::-1]):  # A/B/C/D, then D/C/B/A
                res[trainer].append(run_one(trainer, s, a, a.cycles))
        blocks.append(_table(size, s, res))
    head = "\n".join([
        f"\n## On-policy distillation: takd vs TRL {trl.__version__} DistillationTrainer and TRL 1.14.2 MiniLLMTrainer "
        f"— {dt.date.today()} — {platform.node()} ({platform.machine()}, torch {torch.__version__}, "
        f"{a.threads} threads)",
        f"Command: `PYTHONPATH=. python benchmarks/vs_trl.py --batch {a.batch} --tokens {a.tokens} --micro {a.micro} "
        f"--cycles {a.cycles} --repeats {a.repeats}` (settings: the script's docstring).",
        f"B={a.batch} prompts × T={a.tokens} new tokens per cycle, micro-batch {a.micro}, one pass per rollout, "
        f"{a.cycles} cycles per timed run, {a.repeats} interleaved repeats, each run its own process.", ""])
    record(head + "\n".join(blocks), write=not a.no_record)
    shutil.rmtree(a.work, ignore_errors=True)


def _table(size: str, s: dict, res: dict[str, list[dict]]) -> str:
    spec = SIZES[size]
    med = {t: statistics.median(x["tok_s"] for x in v) for t, v in res.items()}
    best_trl = max(med[t] for t in TRAINERS if t.startswith("TRL"))
    lines = [f"\n### {size}: student OPT {spec['student'][0]}×{spec['student'][1]}, teacher OPT "
             f"{spec['teacher'][0]}×{spec['teacher'][1]}, vocabulary {s['vocab']:,}\n",
             "| trainer | tokens/s min | median | max | ratio to the best TRL (medians) | peak RSS MB | above "
             "loaded models MB | generating s | training s |", "|---|---|---|---|---|---|---|---|---|"]
    for t, v in res.items():
        rates = [x["tok_s"] for x in v]
        lines.append(f"| {t} | {min(rates):.1f} | {med[t]:.1f} | {max(rates):.1f} | {med[t] / best_trl:.2f} | "
                     f"{statistics.median(x['peak_mb'] for x in v):,.0f} | "
                     f"{statistics.median(x['above_mb'] for x in v):,.0f} | "
                     f"{statistics.median(x['generating'] for x in v):.2f} | "
                     f"{statistics.median(x['seconds'] - x['generating'] for x in v):.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
