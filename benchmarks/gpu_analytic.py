"""The analytic estimate for the GPU benchmark no session could run yet (no GPU lent): a MiniLLM stage with a
random-init-sized OPT-1.3B student and OPT-6.7B teacher in bf16, as takd plans it, with and without
`minillm.teacher_cache`.

    PYTHONPATH=. python benchmarks/gpu_analytic.py [--no-record]

Everything comes from the planner's own models (`takd/chain/resources.py`, `takd/chain/timing.py`) and their stated
assumptions: training at 35 % of the GPU's dense bf16 peak (6·N FLOPs per trained token, 2·N per teacher token),
decoding memory-bound at 60 % of HBM bandwidth (2 B per parameter per generated token, both models at α = 0.2).
Rollout tokens/s = rollout_batch_size / (student + teacher decode time per token); an optimizer step's FLOPs and
time; the teacher's PPO-pass forwards per round; memory per GPU; the stage's hours (5000 steps, the reference's
settings). A GPU run should replace these with measurements (rollout tokens/s, update MFU, peak memory).
"""

from __future__ import annotations

from pathlib import Path

from _results import arguments, record, table_block

from takd.chain.allocate import assign_resources
from takd.chain.plan import build_plan
from takd.chain.profiles import ClusterProfile, load_cluster, load_profile, profile_path
from takd.chain.timing import Hardware, Placement, decode_seconds_per_token, stage_hours, teacher_pass_share
from takd.models import registry

H200 = {"name": "h200", "gpu_type": "h200", "gpu_mem_gb": 141.0, "gpus_per_node": 8, "cpus_per_gpu": 8,
        "mem_gb_per_gpu": 120.0, "max_time_hours": 168.0, "account_required": False, "internet_on_compute": False,
        "peak_tflops": 989.0, "hbm_tb_s": 4.8, "nvlink_gb_s": 450.0, "internode_gb_s": 50.0}


def stage(cluster: ClusterProfile, cache: bool):
    st = next(s for s in build_plan(["opt-6.7b", "opt-1.3b"], run_dir=Path("/r"),
                                    profile=load_profile(profile_path("default")), evaluate=False,
                                    overrides=[f"minillm.teacher_cache={str(cache).lower()}"])
              if s.config.method == "minillm")
    assign_resources([st], cluster)
    return st


def row(cluster: ClusterProfile, cache: bool) -> str:
    st = stage(cluster, cache)
    cfg, mc = st.config, st.config.minillm
    hw = Hardware(cluster.peak_tflops, cluster.hbm_tb_s, cluster.nvlink_gb_s, cluster.internode_gb_s,
                  cluster.gpus_per_node)
    place = Placement(st.nodes, st.gpus_per_node)
    s_params, t_params = (registry.resolve(m).params_m * 1e6 for m in ("opt-1.3b", "opt-6.7b"))
    per_token = decode_seconds_per_token(s_params, hw, place, False) + decode_seconds_per_token(t_params, hw, place,
                                                                                                False)
    seq = cfg.max_prompt_tokens + cfg.max_new_tokens
    share = teacher_pass_share(mc.ppo_epochs, cfg.micro_batch_size, place.world) if mc.teacher_cache else 1.0
    pt = cfg.batch_size * mc.pt_chunk_tokens
    step_flops = (8 if st.checkpointing else 6) * s_params * (cfg.batch_size * seq + pt) + \
        2 * t_params * (cfg.batch_size * seq * share + pt)
    step_s = step_flops / (place.world * hw.peak_tflops * 1e12 * 0.35)
    hours = stage_hours(cfg, s_params, t_params, hw, place, st.checkpointing, 13_511)
    return (f"| {cluster.name} ({cluster.gpu_mem_gb:g} GB) | {'on' if mc.teacher_cache else 'off'} | "
            f"{place.world} | {mc.rollout_batch_size / per_token:,.0f} | {step_flops / 1e15:.1f} | {step_s:.2f} | "
            f"{mc.ppo_epochs * share:.2f} | {st.mem_per_gpu_gb:.1f} | {hours['train']:.1f} + "
            f"{hours['rollouts']:.1f} + {hours['validation']:.1f} = {hours['total']:.1f} |")


def main() -> None:
    args = arguments(__doc__)
    rows = [row(c, cache) for c in (load_cluster("rorqual"), ClusterProfile(**H200)) for cache in (False, True)]
    record(table_block(
        "MiniLLM OPT-6.7B → OPT-1.3B on one GPU, bf16: the analytic estimate (no GPU measured)", "takd's estimators",
        "Command: `PYTHONPATH=. python benchmarks/gpu_analytic.py`. The reference's settings (256 rollouts per round "
        "in calls of 16, 4 PPO passes of 64, PT loss on 512-token chunks, 256 + 256 tokens), as takd plans the stage "
        "on one GPU. Assumptions (not measurements): MFU 35 % of dense bf16 peak for updates, decoding at 60 % of HBM "
        "bandwidth; H200: 989 TFLOP/s, 4.8 TB/s. Teacher forwards per round: PPO-pass forwards per rollout.",
        ["GPU", "teacher cache", "GPUs", "rollout tokens/s", "PFLOP per step", "s per step", "teacher fwd per round",
         "GB per GPU", "hours: train + rollouts + validation"], rows), write=not args.no_record)


if __name__ == "__main__":
    main()
