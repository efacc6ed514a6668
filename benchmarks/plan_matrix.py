"""Every paper setting × every Alliance cluster profile: what the planner picks for the distillation stage.

    python benchmarks/plan_matrix.py [--no-record]

For each MiniLLM setting of the paper (GPT-2 1.5B -> 760M / 340M / 120M; OPT 13B -> 6.7B / 2.7B / 1.3B; LLaMA
13B -> 7B) and each GPU cluster profile, plans the chain teacher,student with the default profile and reports the
MiniLLM stage's allocation (nodes x GPUs, ZeRO choice), its memory estimate per GPU, estimated hours, the Slurm jobs
it needs, its GPU-hours and RGU-hours, and the whole plan's GPU-hours; or why it cannot run there. Planning only:
no GPU, no download. Appends the table to benchmarks/RESULTS.md unless --no-record.
"""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

from _results import arguments, record

from takd.chain.allocate import assign_resources
from takd.chain.plan import _zero_label, build_plan
from takd.chain.profiles import default_profile, load_cluster, load_profile
from takd.config import ConfigError

HERE = Path(__file__).resolve().parent
SETTINGS = [("gpt2-1.5b", "gpt2-760m"), ("gpt2-1.5b", "gpt2-340m"), ("gpt2-1.5b", "gpt2-120m"),
            ("opt-13b", "opt-6.7b"), ("opt-13b", "opt-2.7b"), ("opt-13b", "opt-1.3b"), ("llama-13b", "llama-7b")]
CLUSTERS = ["narval", "rorqual", "fir", "nibi", "trillium"]


def row(teacher: str, student: str, cluster_name: str) -> str:
    cluster = load_cluster(cluster_name)
    chain = [teacher, student]
    try:
        stages = build_plan(chain, run_dir=Path("/plan"), profile=load_profile(default_profile(chain)), evaluate=False)
        assign_resources(stages, cluster)
    except ConfigError as err:
        return f"| {teacher} → {student} | {cluster_name} | - | - | - | - | - | - | - | no: {err} |"
    st = next(s for s in stages if s.role == "distill")
    gpus = st.nodes * st.gpus_per_node
    gpuh = gpus * st.est_hours
    total = sum(s.nodes * s.gpus_per_node * s.est_hours for s in stages)
    jobs = f"{st.jobs} x {cluster.max_time_hours:g} h" if st.jobs > 1 else "1"
    rgu = gpuh * cluster.rgu_per_gpu
    return (f"| {teacher} → {student} | {cluster_name} | {st.nodes}x{st.gpus_per_node} | {_zero_label(st)} | "
            f"{st.mem_per_gpu_gb:.1f} | {st.est_hours:.1f} | {jobs} | {gpuh:,.0f} | {rgu:,.0f} | "
            f"yes (whole plan {total:,.0f} GPU-h) |")


def main() -> None:
    args = arguments(__doc__)
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True).stdout
    lines = [f"\n## Every paper setting on every cluster profile — {dt.date.today()}, commit {git.strip()}",
             "Command: `python benchmarks/plan_matrix.py`. The MiniLLM stage of `--chain teacher,student` with the "
             "default profile (5000 steps, mini-batch 64, 256 rollouts per round, bf16): the planner's allocation "
             "(ZeRO: the student's stage, g gathered for generation, +T3 teacher sharded), its memory estimate (model "
             "states as DeepSpeed's own estimators count them, plus working memory), its "
             "estimated hours (takd/chain/timing.py: 35 % MFU, decode at 60 % of HBM bandwidth, a 200 Gb/s "
             "link per node), the jobs it needs at the partition's limit, GPU-hours and RGU-hours.", "",
             "| setting | cluster | GPUs | ZeRO | GB/GPU | est. h | jobs | GPU-h | RGU-h | feasible |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [row(t, s, c) for t, s in SETTINGS for c in CLUSTERS]
    block = "\n".join(lines + [""])
    record(block, write=not args.no_record)


if __name__ == "__main__":
    main()
