"""The teacher's logits kept across a round's PPO passes (`minillm.teacher_cache`, #18): the same losses as
recomputing them, the teacher run once per sample per round on one process, the owner-first deal of a global
micro-batch, and the planner's decision."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from takd.chain.timing import teacher_pass_share
from takd.train.minillm.teacher_cache import TeacherLogitCache, owner_first_deal


def test_owner_first_deal_keeps_the_micro_batch_and_prefers_owners():
    # world 2, 2 per rank: 5, 1, 3 and 7 are all rank 1's; it keeps the first two, rank 0 takes the overflow
    assert owner_first_deal([5, 1, 3, 7], 2, 2) == [[3, 7], [5, 1]]
    assert owner_first_deal([0, 1, 2, 3], 2, 2) == [[0, 2], [1, 3]]
    rng = random.Random(0)
    for _ in range(200):
        world, per_rank = rng.choice([(2, 2), (4, 4), (3, 5)])
        idx = rng.sample(range(64), per_rank * world)
        dealt = owner_first_deal(idx, per_rank, world)
        assert sorted(i for d in dealt for i in d) == sorted(idx) and all(len(d) == per_rank for d in dealt)


@pytest.mark.parametrize("world,per_rank", [(1, 4), (2, 2), (4, 4), (8, 1)])
def test_teacher_pass_share_matches_a_simulation_of_the_deal(world, per_rank):
    """The planner's expected share of teacher rows still computed equals a simulation of the passes."""
    epochs, n = 4, 64 * world * per_rank
    rng = random.Random(1)
    computed = 0
    cached: list[set[int]] = [set() for _ in range(world)]  # each rank keeps what it owns
    for _ in range(epochs):
        order = rng.sample(range(n), n)
        for s in range(0, n, per_rank * world):
            for r, mine in enumerate(owner_first_deal(order[s: s + per_rank * world], per_rank, world)):
                for i in mine:
                    if i not in cached[r]:
                        computed += 1
                        if i % world == r:
                            cached[r].add(i)
    assert computed / (epochs * n) == pytest.approx(teacher_pass_share(epochs, per_rank, world), abs=0.02)


def test_cache_returns_kept_rows_and_computes_only_the_missing_ones():
    calls = []

    def forward(rows):
        calls.append(list(rows))
        return torch.stack([torch.full((3, 5), float(positions[r])) for r in rows])

    cache = TeacherLogitCache(rank=0, world=2, sharded_teacher=False, any_rank=lambda missing: missing)
    cache.start_round(0)
    positions, lengths = [0, 1, 2], [3, 2, 1]
    first = cache.logits(positions, lengths, forward)
    assert calls == [[0, 1, 2]] and sorted(cache.rows) == [0, 2]  # rank 0 keeps the even (its own) positions
    positions = [2, 1, 0]
    second = cache.logits(positions, [1, 2, 3], forward)
    assert calls[-1] == [1]  # only the row this rank does not own is run again
    assert torch.equal(second[0, :1], first[2, :1]) and torch.equal(second[2], first[0])
    assert second[0, 1:].abs().sum() == 0  # beyond a response's end: zeros, masked by the loss
    assert (cache.computed, cache.requested) == (4, 6)
    cache.start_round(1)
    assert cache.rows == {} and cache.computed == 0


def test_sharded_teacher_enters_the_collective_forward_when_another_rank_needs_it():
    calls = []
    cache = TeacherLogitCache(rank=0, world=2, sharded_teacher=True, any_rank=lambda missing: True)
    cache.start_round(0)
    cache.rows[0] = torch.zeros(2, 4)
    out = cache.logits([0], [2], lambda rows: calls.append(rows) or torch.ones(len(rows), 2, 4))
    assert calls == [[0]] and out.abs().sum() == 0  # ran with the others, used its own kept row


def test_cached_teacher_gives_the_recomputed_losses(trained_teacher, tmp_path):
    """float32, one process, 2 PPO passes over 8 rollouts in micro-batches of 4: the same loss terms at every step
    (to 1e-6 relative: a teacher forward over fewer rows rounds differently in float32, a few ulps of a loss of ~5),
    the teacher's PPO rows halved (8 of 16: once per sample per round)."""
    from takd.train.config import stage_config
    from takd.train.minillm.trainer import MiniLLMTrainer

    steps: dict[bool, list[dict]] = {}
    for cached in (False, True):
        cfg = stage_config("minillm", name="c", student="tiny-s", teacher=str(trained_teacher),
                           output_dir=str(tmp_path / str(cached)), max_steps=8, micro_batch_size=4, batch_size=4,
                           max_new_tokens=24, max_prompt_tokens=128, eval_every_steps=0, tensorboard=False)
        cfg.optim.lr, cfg.optim.warmup_steps = 5e-4, 0  # updates that move the weights between passes
        m = cfg.minillm
        m.num_rollouts, m.rollout_batch_size, m.ppo_epochs, m.pt_loss = 8, 8, 2, "none"
        m.teacher_cache = cached
        t = MiniLLMTrainer(cfg)
        t.setup()
        steps[cached] = [t.optimizer_step() for _ in range(8)]  # 2 rounds of 4 steps
    for a, b in zip(steps[False], steps[True], strict=True):
        for k in ("loss", "pg", "reg", "ratio"):
            assert float(b[k]) == pytest.approx(float(a[k]), rel=1e-6, abs=1e-6), k
    shares = [float(s["teacher_rows"]) for s in steps[True]]
    assert shares[3] == pytest.approx(0.5) and shares[7] == pytest.approx(0.5)  # end of each round: 8 of 16 rows
    assert shares[0] == shares[1] == 1.0  # the first pass computes every row


def test_planner_keeps_the_teacher_logits_when_they_fit(monkeypatch):
    from takd.chain.allocate import assign_resources
    from takd.chain.plan import build_plan
    from takd.chain.profiles import load_cluster, load_profile, profile_path

    monkeypatch.setenv("TAKD_HOME", "/takd-home")
    for chain, cluster, expect in ((["gpt2-1.5b", "gpt2-120m"], "rorqual", True),
                                   (["opt-2.7b", "opt-1.3b"], "narval", False)):  # 38 GB + 6.6 > 0.9 x 40
        stages = build_plan(chain, run_dir=Path("/r"),
                            profile=load_profile(profile_path("default")), evaluate=False)
        assign_resources(stages, load_cluster(cluster))
        st = next(s for s in stages if s.config.method == "minillm")
        assert st.config.minillm.teacher_cache is expect
        assert any("teacher's logits are " + ("kept" if expect else "not kept") in n for n in st.notes)
        if expect:  # one GPU: the teacher runs once per sample per round instead of 4 times
            assert st.nodes * st.gpus_per_node == 1 and "drop to 25%" in " ".join(st.notes)
