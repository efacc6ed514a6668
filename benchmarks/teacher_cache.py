"""The teacher's share of a MiniLLM round, and what keeping its logits across the PPO passes saves (one process).

    PYTHONPATH=. python benchmarks/teacher_cache.py [--no-record]

Per size (student/teacher OPT as in vs_trl.py: "tiny" with GPT-2's 50,257-token vocabulary, "vocab" with 128,256),
one MiniLLM round = 16 rollouts × 32 new tokens, 4 PPO passes in micro-batches of 4 (16 optimizer steps), α = 0.2,
no PT loss, fp32. Runs without and with `minillm.teacher_cache`, alternating, 3 repeats of 2 rounds each (the
first round of every run is an untimed warm-up): wall time of a round, the time inside the single-step term's
teacher forwards (timed around the trainer's `teacher_logits`), teacher rows run per round, and the largest
difference of any logged loss term between the two runs (float32: the cache is exact up to batch-shape numerics).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch
from _results import arguments, record, table_block
from vs_trl import SIZES, gpt2_tokenizer, make_model, word_tokenizer

STEPS_PER_ROUND = 16  # 16 rollouts × 4 passes / 4 per step


def run(student: Path, teacher: Path, work: Path, cached: bool) -> dict:
    from takd.train.config import stage_config
    from takd.train.minillm.trainer import MiniLLMTrainer

    cfg = stage_config("minillm", name="b", student=str(student), teacher=str(teacher),
                       output_dir=str(work / f"{cached}-{time.time_ns()}"), max_steps=10**6, micro_batch_size=4,
                       batch_size=4, max_new_tokens=32, max_prompt_tokens=256, eval_prompts=0, tensorboard=False)
    m = cfg.minillm
    m.num_rollouts, m.rollout_batch_size, m.ppo_epochs, m.pt_loss, m.log_student_rev_kl = 16, 16, 4, "none", False
    m.teacher_cache = cached
    t = MiniLLMTrainer(cfg)
    t.setup()
    inside = [0.0]
    plain = t.teacher_logits

    def timed(batch):
        t0 = time.perf_counter()
        out = plain(batch)
        inside[0] += time.perf_counter() - t0
        return out

    t.teacher_logits = timed
    terms = [t.optimizer_step() for _ in range(STEPS_PER_ROUND)]  # warm-up round
    inside[0] = 0.0
    t0 = time.perf_counter()
    terms += [t.optimizer_step() for _ in range(STEPS_PER_ROUND)]
    wall = time.perf_counter() - t0
    rows = float(terms[-1]["teacher_rows"]) * 16 * 4 if cached else 16 * 4
    return {"wall": wall, "teacher": inside[0], "rows": rows, "terms": terms}


def main() -> None:
    args = arguments(__doc__, ("--repeats", {"type": int, "default": 3}))
    torch.set_num_threads(2)
    from takd.models.loading import quiet_transformers

    quiet_transformers()
    work = Path(tempfile.mkdtemp(prefix="takd-tcache-"))
    rows = []
    for size, spec in SIZES.items():
        d = work / size
        tok = word_tokenizer(spec["vocab"], d / "tok") if spec["vocab"] else gpt2_tokenizer()
        vocab = spec["vocab"] or len(tok)
        student = make_model(tok, vocab, *spec["student"], 0, d / "student")
        teacher = make_model(tok, vocab, *spec["teacher"], 1, d / "teacher")
        res: dict[bool, list[dict]] = {False: [], True: []}
        for r in range(args.repeats):
            for cached in ((False, True) if r % 2 == 0 else (True, False)):
                res[cached].append(run(student, teacher, d, cached))
        diff = max(abs(float(a[k]) - float(b[k])) for x, y in zip(res[False], res[True], strict=True)
                   for a, b in zip(x["terms"], y["terms"], strict=True) for k in ("loss", "pg", "reg"))
        for cached in (False, True):
            wall = statistics.median(x["wall"] for x in res[cached])
            teach = statistics.median(x["teacher"] for x in res[cached])
            rows.append(f"| {size} ({vocab:,}) | {'on' if cached else 'off'} | {wall:.2f} | {teach:.2f} | "
                        f"{teach / wall:.0%} | {res[cached][0]['rows']:.0f} | "
                        f"{statistics.median(res[False][i]['wall'] for i in range(args.repeats)) / wall:.2f} | "
                        f"{diff:.1e} |")
    record(table_block(
        "MiniLLM: the teacher's share of a round, with and without minillm.teacher_cache", f"torch "
        f"{torch.__version__}, 2 threads",
        "Command: `PYTHONPATH=. python benchmarks/teacher_cache.py`. One round = 16 rollouts × 32 new tokens, 4 PPO "
        "passes of micro-batches of 4 (16 steps), α = 0.2, no PT loss, fp32, one process; medians of "
        f"{args.repeats} alternating runs (each timing its second round). Teacher rows per round: rows of the "
        "PPO passes that ran the teacher (without the cache: every row of every pass). Max |Δ| over every step's "
        "loss, pg and reg between the two runs.",
        ["size (vocabulary)", "cache", "round s", "teacher fwd s", "teacher share", "teacher rows per round",
         "speed-up vs off", "max |Δ| loss terms"], rows), write=not args.no_record)


if __name__ == "__main__":
    main()
