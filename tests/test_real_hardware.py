"""Training that holds on real hardware: mixed precision with float32 master weights, the reference's global batch
at any process count, gradient checkpointing, sampling filters that keep the loss finite, a stop before any
non-finite update, and the reference's warmup."""

from __future__ import annotations

import contextlib
import json
import math

import pytest
import torch

from takd.models.loading import load_model
from takd.train import backend as backend_lib
from takd.train.backend import TorchBackend, lr_factor
from takd.train.config import OptimConfig, accumulation_steps, stage_config
from takd.train.supervised import SFTTrainer

SMALL = dict(max_new_tokens=24, max_prompt_tokens=128, eval_prompts=4, tensorboard=False, select_by="last")


def _sft(out, steps: int, **fields) -> SFTTrainer:
    cfg = stage_config("sft", student="tiny-s", output_dir=str(out), max_steps=steps, batch_size=8,
                       micro_batch_size=8, **{**SMALL, **fields})
    cfg.optim.lr = 5e-6  # the reference's MiniLLM lr: updates far below bf16's resolution of the weights
    return SFTTrainer(cfg)


def _updates(trainer: SFTTrainer, steps: int) -> dict[str, torch.Tensor]:
    trainer.setup()
    init = {k: v.detach().float().clone() for k, v in trainer.student.state_dict().items()}
    for _ in range(steps):
        trainer.optimizer_step()
    return {k: v.detach().float() - init[k] for k, v in trainer.student.state_dict().items()}


class _PureBF16(TorchBackend):
    """What one-GPU bf16 stages used to do: bf16 parameters stepped by plain AdamW (the negative control)."""

    def load_student(self, source):
        self.module = load_model(source, torch.bfloat16)
        return self.module

    def compute(self):
        return contextlib.nullcontext()


def _cos(a: dict, b: dict) -> float:
    flat = lambda d: torch.cat([v.flatten() for v in d.values()])  # noqa: E731
    return float(torch.nn.functional.cosine_similarity(flat(a), flat(b), dim=0))


def test_bfloat16_keeps_float32_master_weights_that_follow_the_float32_run(tmp_path, monkeypatch):
    steps = 60
    fp32 = _updates(_sft(tmp_path / "fp32", steps), steps)
    bf16 = _updates(_sft(tmp_path / "bf16", steps, dtype="bfloat16"), steps)
    monkeypatch.setattr("takd.train.loop.create_backend", _PureBF16)
    pure = _updates(_sft(tmp_path / "pure", steps, dtype="bfloat16"), steps)
    cos, cos_pure = _cos(bf16, fp32), _cos(pure, fp32)
    print(f"cosine of the weight updates vs float32 after {steps} steps at lr 5e-6: autocast + fp32 master "
          f"{cos:.4f}; pure bf16 parameters {cos_pure:.4f}")
    assert cos > 0.99 and cos_pure < 0.6  # the measure tells the two apart
    norms = [k for k in fp32 if "layer_norm" in k and k.endswith("weight")]
    assert all(float(bf16[k].abs().max()) > 1e-5 for k in norms)  # LayerNorm scales at 1.0 move
    assert all(float(pure[k].abs().max()) == 0.0 for k in norms)  # ... where bf16 rounds every update away


def test_bfloat16_resume_restores_the_master_weights_exactly_and_exports_in_bfloat16(tmp_path):
    first = _sft(tmp_path / "run", 6, dtype="bfloat16", save_every_steps=6)
    first.run()
    final = tmp_path / "run" / "final"
    assert json.loads((final / "config.json").read_text())["dtype"] == "bfloat16"
    assert load_model(str(final), torch.bfloat16) is not None
    again = _sft(tmp_path / "run", 12, dtype="bfloat16", save_every_steps=6)
    again.setup()
    again.restore(again.resume_from)
    assert again.step == 6 and next(again.student.parameters()).dtype == torch.float32
    for (name, a), b in zip(first.student.state_dict().items(), again.student.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    moments = lambda t: [s["exp_avg"] for s in t.backend.optimizer.state.values()]  # noqa: E731
    assert all(torch.equal(a, b) for a, b in zip(moments(first), moments(again), strict=True))


def test_float16_trains_with_a_dynamic_loss_scale(tmp_path):
    t = _sft(tmp_path / "fp16", 3, dtype="float16")
    t.setup()
    assert t.backend.scaler is not None
    losses = [t.optimizer_step()["loss"] for _ in range(3)]
    assert all(math.isfinite(x) for x in losses) and t.backend.scaler.get_scale() > 1.0
    t.backend.save_state(tmp_path)
    assert "scaler" in torch.load(tmp_path / backend_lib.OPTIMIZER_FILE, weights_only=False)


def test_gradient_checkpointing_takes_the_same_step(tmp_path):
    steps = [_updates(_sft(tmp_path / str(on), 1, gradient_checkpointing=on), 1) for on in (False, True)]
    for k in steps[0]:
        assert torch.allclose(steps[0][k], steps[1][k], atol=1e-7), k
    t = _sft(tmp_path / "auto", 1)
    t.setup()
    assert t.backend.checkpointing is False  # null: on only from 1B parameters


def test_the_global_batch_is_the_same_at_any_process_count():
    cfg = stage_config("sft", batch_size=32, micro_batch_size=8)
    assert [accumulation_steps(cfg, w) * 8 * w for w in (1, 2, 4)] == [32, 32, 32]
    from takd.config import ConfigError

    with pytest.raises(ConfigError, match=r"batch_size=32 cannot be split evenly into micro-batches of 8 on 3"):
        accumulation_steps(cfg, 3)


def test_the_same_chain_on_two_clusters_trains_every_stage_on_the_same_global_batch(tmp_path):
    from takd.chain.allocate import assign_resources
    from takd.chain.plan import build_plan
    from takd.chain.profiles import default_profile, load_cluster, load_profile

    chain = ["opt-13b", "opt-6.7b", "opt-1.3b"]
    plans = {}
    for cluster in ("narval", "nibi"):  # 4 vs 8 GPUs per node
        stages = build_plan(chain, run_dir=tmp_path, profile=load_profile(default_profile(chain)), evaluate=False)
        assign_resources(stages, load_cluster(cluster))
        plans[cluster] = {s.name: s for s in stages}
    for name, a in plans["narval"].items():
        b = plans["nibi"][name]
        assert a.config.batch_size == b.config.batch_size, name
        for st in (a, b):
            world = st.nodes * st.gpus_per_node
            assert st.config.micro_batch_size * accumulation_steps(st.config, world) * world == st.config.batch_size
        if a.config.method == "minillm":
            assert a.config.minillm.num_rollouts == b.config.minillm.num_rollouts == 256
            assert a.config.batch_size == 64
        else:
            assert a.config.batch_size == 32
    worlds = {c: plans[c]["minillm-opt-13b-to-opt-6.7b"].nodes * plans[c]["minillm-opt-13b-to-opt-6.7b"].gpus_per_node
              for c in plans}
    assert worlds["narval"] != worlds["nibi"]  # different process counts, one global batch


def test_warmup_starts_at_zero_as_the_reference():
    o = OptimConfig(lr=1.0, warmup_steps=4, schedule="constant")
    assert [lr_factor(s, o, 100) for s in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    c = OptimConfig(lr=1.0, min_lr=0.0, warmup_steps=0, schedule="cosine")
    assert lr_factor(50, c, 100) == pytest.approx(0.5) and lr_factor(100, c, 100) == pytest.approx(0.0)


def test_vector_lr_steps_embeddings_biases_and_norms_at_their_own_rate(tmp_path):
    """Adam's first step moves each weight by ~its group's lr (m/sqrt(v) = g/|g|): embedding tables, biases and norm
    gains by `vector_lr`, the weight matrices by `lr`; without `vector_lr` every parameter by `lr`."""
    def largest_moves(vector_lr):
        t = _sft(tmp_path / str(vector_lr), 1)
        t.cfg.optim = OptimConfig(lr=1e-3, vector_lr=vector_lr, weight_decay=0.0, schedule="constant")
        moved = _updates(t, 1)
        return {k: float(v.abs().max()) for k, v in moved.items()}

    split = largest_moves(3e-3)
    # (k_proj's bias is left out: softmax ignores a shift shared by all keys, so its gradient is ~0, below Adam's eps)
    vectors = [k for k in split if "embed" in k or "layer_norm" in k or k.endswith(".bias") and "k_proj" not in k]
    matrices = [k for k in split if k.endswith("proj.weight") or k.endswith("fc1.weight") or k.endswith("fc2.weight")]
    assert len(vectors) > 10 and len(matrices) >= 8  # 2 layers: 4 attention + 2 MLP matrices each
    for k in vectors:
        assert split[k] == pytest.approx(3e-3, rel=1e-2), k
    for k in matrices:
        assert split[k] == pytest.approx(1e-3, rel=1e-2), k
    one = largest_moves(None)
    assert all(one[k] == pytest.approx(1e-3, rel=1e-2) for k in vectors + matrices)


def test_a_non_finite_loss_stops_the_stage_before_the_update(tmp_path):
    from takd.train.loop import NonFiniteLoss

    t = _sft(tmp_path / "nan", 3)
    t.setup()
    t.optimizer_step()
    before = {k: v.clone() for k, v in t.student.state_dict().items()}
    clean = t.loss_terms
    t.loss_terms = lambda batch: {**clean(batch), "ce": torch.tensor(float("nan")), "loss": clean(batch)["loss"]}
    t.step = 1
    with pytest.raises(NonFiniteLoss) as err:
        t.optimizer_step()
    assert "\n" not in str(err.value) and "optimizer step 2: loss term 'ce' is nan" in str(err.value)
    assert all(torch.equal(before[k], v) for k, v in t.student.state_dict().items())


def test_epochs_size_a_supervised_stage(tmp_path, capsys):
    from takd.train.run import run_stage

    cfg = stage_config("sft", student="tiny-s", output_dir=str(tmp_path / "ep"), epochs=0.05, batch_size=32,
                       micro_batch_size=16, log_every_steps=1, eval_every_steps=0, **SMALL)
    run_stage(cfg)
    out = capsys.readouterr().out
    assert "5 steps (0.05 epochs x 3000 examples / 32 per step, rounded up)" in out  # ⌈150 / 32⌉
    rows = [json.loads(x) for x in (tmp_path / "ep" / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in rows) == 5


def test_a_top_k_filter_keeps_minillm_finite_on_the_students_kept_set(trained_teacher, tmp_path):
    from takd.losses import reverse_kl
    from takd.sampling import restricted_logits
    from takd.train.minillm import objective as M
    from takd.train.minillm.trainer import MiniLLMTrainer

    # hand case, V = 5, the student's kept set {0, 1}: both distributions renormalised on it
    q = torch.tensor([[[0.5, 0.3, 0.1, 0.06, 0.04]]]).log()
    p = torch.tensor([[[0.2, 0.2, 0.4, 0.1, 0.1]]]).log()
    kept = torch.tensor([[[0, 1]]])
    logq, reg = M.policy_token_terms(q, p, torch.tensor([[1]]), 1.0, kept)
    want = 0.625 * math.log(0.625 / 0.5) + 0.375 * math.log(0.375 / 0.5)  # q' = (.625, .375), p' = (.5, .5)
    assert reg.item() == pytest.approx(want, abs=1e-6) and logq.item() == pytest.approx(math.log(0.375), abs=1e-6)
    # unrestricted, the teacher's own top-k support would differ from the student's and give inf
    log_q = M.log_probs(restricted_logits(q, 1.0, kept))
    assert torch.isinf(reverse_kl(log_q, M.log_probs(restricted_logits(p, 1.0, torch.tensor([[[2, 3]]])))).sum())

    for alpha in (0.0, 0.2):
        cfg = stage_config("minillm", name="k", student="tiny-s", teacher=str(trained_teacher),
                           output_dir=str(tmp_path / f"a{alpha}"), max_steps=3, batch_size=4, micro_batch_size=4,
                           **SMALL)
        m = cfg.minillm
        m.alpha, m.num_rollouts, m.rollout_batch_size, m.pt_chunk_tokens, m.sampling.top_k = alpha, 8, 8, 64, 4
        t = MiniLLMTrainer(cfg)
        t.setup()
        terms = [t.optimizer_step() for _ in range(3)]
        assert all(math.isfinite(v) for step in terms for v in step.values()), terms
        samples = t.buffer.samples
        assert all(len(k) == 4 for s in samples for k in s.kept_ids)
        dropped = sum(not v for s in samples for v in s.valid)
        if alpha == 0.0:
            assert dropped == 0  # the student's own samples always lie in its kept set
        else:
            assert dropped > 0  # teacher-mixed tokens outside the student's top-4: dropped, not NaN
