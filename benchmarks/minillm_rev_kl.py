"""Does each MiniLLM stage of a finished run lower its held-out reverse KL to its teacher, beyond the estimator's
noise? (#17)

    python benchmarks/minillm_rev_kl.py --run-dir RUN [--seeds 1,2,3,4,5] [--prompts N] [--no-record]

For every MiniLLM stage in RUN: the trainer's own held-out estimate (per-token KL(q‖p) on the student's samples of
the first N validation prompts; N: the stage's `minillm.val_rev_kl_prompts` unless given) of the stage's start
model (its `student`) and of its hand-off (`final/`: the checkpoint its `select_by` kept, step shown), at each of
`--seeds` sampling seeds — seeds the trainer does not use, so the in-training curve is not re-read. The fall is
hand-off − start paired by seed, with its 95 % interval; "falls" when the whole interval is below 0.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _results import arguments, record, table_block  # noqa: E402


def estimates(model_dir: str, *, teacher, examples, tok, max_new_tokens: int, seeds: list[int]) -> list[float]:
    """The model's held-out reverse KL to `teacher` at each sampling seed."""
    from takd.models.loading import load_model
    from takd.train.validation import held_out_reverse_kl

    model = load_model(model_dir)
    return [held_out_reverse_kl(model, teacher, examples, tok, max_new_tokens=max_new_tokens, seed=s) for s in seeds]


def main() -> None:
    args = arguments(__doc__, ("--run-dir", {"required": True, "help": "a finished run directory"}),
                     ("--seeds", {"default": "1,2,3,4,5", "help": "sampling seeds of the estimate"}),
                     ("--prompts", {"type": int, "default": 0, "help": "validation prompts (0: the stage's own)"}))
    import torch

    from takd.chain.plan import read_plan
    from takd.evaluate.metrics import mean_ci95
    from takd.models.loading import load_model, load_tokenizer_for, quiet_transformers
    from takd.train.validation import validation_examples

    quiet_transformers()
    seeds = [int(s) for s in args.seeds.split(",")]
    run = Path(args.run_dir)
    rows, t0 = [], time.time()
    _, planned = read_plan(run)
    starts: dict[tuple, list[float]] = {}  # replicate stages share their start and teacher: read it once
    for cfg in [st.config for st in planned if st.kind == "train" and st.config.method == "minillm"]:
        tok = load_tokenizer_for(cfg.student)
        examples = validation_examples(cfg, tok, args.prompts or cfg.minillm.val_rev_kl_prompts)
        teacher = load_model(cfg.teacher)
        final = Path(cfg.output_dir) / "final"
        step = json.loads((final / "takd_model.json").read_text())["step"]
        read = dict(teacher=teacher, examples=examples, tok=tok, max_new_tokens=cfg.max_new_tokens, seeds=seeds)
        key = (cfg.student, cfg.teacher, len(examples), cfg.max_new_tokens, cfg.dataset, cfg.prompt_format)
        if key not in starts:
            starts[key] = estimates(cfg.student, **read)
        at = {"start": starts[key], "end": estimates(str(final), **read)}
        (s_mean, s_ci), (e_mean, e_ci) = mean_ci95(at["start"]), mean_ci95(at["end"])
        fall, fall_ci = mean_ci95([e - s for s, e in zip(at["start"], at["end"], strict=True)])
        verdict = "falls" if fall + fall_ci < 0 else "rises" if fall - fall_ci > 0 else "within noise"
        rows.append(f"| {cfg.name} | {len(examples)} | {s_mean:.3f} ± {s_ci:.3f} | {step} of {cfg.max_steps} | "
                    f"{e_mean:.3f} ± {e_ci:.3f} | "
                    f"{fall:+.3f} ± {fall_ci:.3f} | {max(at['start']) - min(at['start']):.3f} | {verdict} |")
        print(rows[-1], flush=True)
    if not rows:
        sys.exit(f"{run}: its plan has no MiniLLM stage")
    record(table_block(
        "Held-out reverse KL of each MiniLLM stage, start vs end (#17)",
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {time.time() - t0:.0f} s",
        f"Command: `python benchmarks/minillm_rev_kl.py --run-dir {args.run_dir} --seeds {args.seeds}"
        f"{f' --prompts {args.prompts}' if args.prompts else ''}`. Per-token "
        "KL(q‖p) on the student's own samples of the stage's validation prompts (the trainer's estimate) at "
        f"sampling seeds {args.seeds}, mean ± 95 % interval; fall = hand-off − start paired by seed; spread = "
        "max − min of the start's estimates (the estimator's noise).",
        ["stage", "prompts", "start", "hand-off step", "hand-off", "fall", "spread at start", "verdict"], rows),
        not args.no_record)


if __name__ == "__main__":
    main()
