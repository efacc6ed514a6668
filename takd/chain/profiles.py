"""Chain profiles (how each role's stages are configured) and cluster profiles (what a cluster offers and asks).

A chain profile layers stage settings; when a stage config is built, later wins:

    the method's reference defaults < common < role section (sft | init | distill | baseline) < per_model.<model>.<role>
    < the planner's resource choice (deepspeed.*, unless the profile set it and it fits) < --set key=value

Method sections (`kd:`, `seqkd:`, `minillm:`, `pt_dataset`) apply only to stages of that method, so one `distill:`
section can carry both KD and MiniLLM settings; they are still validated for every stage.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from takd import config as cfglib
from takd.config import ConfigError
from takd.evaluate.config import EvalSettings
from takd.models.registry import resolve
from takd.paths import CLUSTER_DIR, CONFIG_DIR
from takd.train.config import (
    METHOD_SECTIONS,
    KDConfig,
    MiniLLMConfig,
    SeqKDConfig,
    StageConfig,
    from_mapping,
    stage_class,
)

ROLES = ("sft", "init", "distill", "baseline")
BASELINES = ("sft", "kd", "seqkd")  # the student baselines a chain can plan beside its distillation
_SECTION_CLASSES = {"kd": KDConfig, "seqkd": SeqKDConfig, "minillm": MiniLLMConfig}


@dataclass
class ChainProfile:
    dataset: str = "dolly"  # training/validation set of every stage
    method: str = "minillm"  # distillation method along the chain (--method overrides)
    baselines: list[str] = field(default_factory=list)  # student baselines planned by default: sft, kd, seqkd
    common: dict[str, Any] = field(default_factory=dict)  # stage keys for every stage
    sft: dict[str, Any] = field(default_factory=dict)  # the teacher's SFT (and the SFT baseline's defaults)
    init: dict[str, Any] = field(default_factory=dict)  # student/TA init SFT
    distill: dict[str, Any] = field(default_factory=dict)  # distillation along the chain and the direct baseline
    baseline: dict[str, Any] = field(default_factory=dict)  # --baselines stages
    per_model: dict[str, Any] = field(default_factory=dict)  # <model>: {<role>: {stage keys}}
    eval: EvalSettings = field(default_factory=EvalSettings)

    def section(self, role: str, model: str) -> dict[str, Any]:
        """The merged stage keys of `role` for `model` (common < role < per_model)."""
        return cfglib.merge(cfglib.merge(self.common, getattr(self, role)),
                            self.per_model.get(model, {}).get(role, {}))


def load_profile(path: str | Path) -> ChainProfile:
    """A chain profile, with its method sections checked for every role (a typo never waits for its stage)."""
    profile = cfglib.load(ChainProfile, path)
    if bad := [b for b in profile.baselines if b not in BASELINES]:
        raise ConfigError(f"{path}: baselines: unknown baseline {bad[0]!r}; expected {', '.join(BASELINES)}")
    sections = [(f"{role}", getattr(profile, role)) for role in ("common", *ROLES)]
    for model, roles in profile.per_model.items():
        if not isinstance(roles, dict) or set(roles) - set(ROLES):
            raise ConfigError(f"{path}: per_model.{model}: expected a mapping of roles ({', '.join(ROLES)})")
        sections += [(f"per_model.{model}.{r}", v) for r, v in roles.items()]
    for where, section in sections:
        for key, cls in _SECTION_CLASSES.items():
            if key in section:
                cfglib.from_dict(cls, section[key], f"{path}: {where}.{key}")
    return profile


def profile_path(name_or_path: str) -> Path:
    """A chain profile by path, or by the name of one packaged in takd/configs/chains (tiny, default, smollm2-cpu)."""
    packaged = CONFIG_DIR / "chains" / f"{name_or_path}.yaml"
    return packaged if not Path(name_or_path).exists() and packaged.is_file() else Path(name_or_path)


def default_profile(chain: list[str]) -> Path:
    tiny = all(resolve(m).is_tiny for m in chain)
    return CONFIG_DIR / "chains" / ("tiny.yaml" if tiny else "default.yaml")


def profile_stage(profile: ChainProfile, role: str, method: str, model: str, overrides: list[str] | None = None,
                  **fields: Any) -> StageConfig:
    """A stage config as the planner builds it: the method's reference defaults < the profile's `role` section for
    `model` (without method sections this method lacks) < `fields` < `overrides` (key=value), validated."""
    own = set(stage_class(method).__dataclass_fields__)
    section = {k: v for k, v in profile.section(role, model).items() if k not in METHOD_SECTIONS or k in own}
    data = cfglib.apply_overrides({**section, "method": method, "dataset": profile.dataset, **fields}, overrides or [])
    return from_mapping(data, f"stage {fields.get('name', role)}")


@dataclass
class ClusterProfile:
    name: str
    gpu_type: str  # Slurm GRES type, e.g. a100, h100 (--gpus-per-node=<type>:<n>)
    gpu_mem_gb: float  # memory per GPU
    gpus_per_node: int  # 0: a CPU-only profile (local test clusters)
    cpus_per_gpu: int
    mem_gb_per_gpu: float  # host memory requested per GPU (0: not requested)
    max_time_hours: float  # the partition's time limit
    account_required: bool
    internet_on_compute: bool
    setup: list[str] = field(default_factory=list)  # sbatch lines before the job starts (modules)
    partition: str | None = None
    cpus_per_task: int = 0  # CPU-only profiles (local): cores per stage
    cpu_tasks_per_node: int = 1  # CPU-only profiles: processes per training stage (DeepSpeed on gloo when > 1)
    mem_gb: float = 0  # CPU-only profiles (local): memory per stage
    # the local executor: stages run at once when their dependencies allow (the machine's cores shared out)
    local_workers: int = 1
    whole_node_only: bool = False  # 1 GPU or whole nodes (Trillium)
    # the GPU's performance, for time estimates (takd.chain.timing); 0: no estimate
    peak_tflops: float = 0  # dense bf16 TFLOP/s per GPU
    hbm_tb_s: float = 0  # HBM bandwidth per GPU, TB/s
    nvlink_gb_s: float = 0  # GPU-to-GPU bandwidth within a node, GB/s
    internode_gb_s: float = 0  # network bandwidth per node, GB/s
    rgu_per_gpu: float = 0  # Alliance reference GPU units one GPU costs per hour (allocation accounting)
    max_jobs: int = 10  # jobs a stage may span (requeued at the time limit; submitit's timeout budget)
    env: dict[str, str] = field(default_factory=dict)  # exported in every job (e.g. caches on scratch)
    submit_host: str | None = None  # where GPU jobs are submitted from, when it is a special login node
    stage_inputs: bool = False  # copy model inputs over 2 GB to node-local $SLURM_TMPDIR before loading


def load_cluster(name: str) -> ClusterProfile:
    path = CLUSTER_DIR / f"{name}.yaml"
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name) or not path.is_file():
        known = sorted(p.stem for p in CLUSTER_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown cluster {name!r}; profiles: {', '.join(known)} (takd/configs/clusters/*.yaml)")
    return cfglib.load(ClusterProfile, path)
