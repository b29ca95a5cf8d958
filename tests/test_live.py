"""SWFP v2's live schedule (swfp.live, swfp.algorithms.swfp): the gate rejects a harmful block and leaves
the policy bit for bit; a live step costs the same whatever the chain's length; τ adaptation holds the
measured W₂ near the radius; the incrementally tracked entropy matches the exact estimate; a resumed
learner continues the live block exactly; the box term pulls out-of-box components back.

Run with ``OMP_NUM_THREADS=1``. The learner tests run the real learner on the one-step bandit
(``swfp/QuadraticBandit-v0``, known optimum), from the misplaced BC flow of ``conftest.bandit_bc``.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from torch import nn

import swfp
from swfp.blocks import BlockConfig, JKOBlock, measure_block, proximal_fraction, train_block
from swfp.cascade import Cascade
from swfp.compute import saved_graph_bytes
from swfp.flow import FlowConfig, FlowPolicy
from swfp.live import LiveBlock, PrefixPool, Temperature
from swfp.logger import read_csv

# Short-run settings: small batches so the live block starts after 64 env steps, S = block_every, no
# compaction.
BANDIT = dict(critic_warmup_steps=200, block_batch_size=64, pool_size=2048, heldout_states=256, td_heldout=256,
              max_blocks=100, blocks_per_run=1)


def bandit_learner(bandit_bc, total_env_steps: int, **overrides) -> swfp.SWFP:
    return swfp.SWFP.from_pretrained(bandit_bc / "bc", config=swfp.SWFPConfig(**{**BANDIT, **overrides}),
                                     total_env_steps=total_env_steps)


def policy_snapshot(policy) -> tuple[dict, np.ndarray]:
    """The acting policy's weights and its actions on fixed states and noise."""
    cascade = policy.cascade
    torch.manual_seed(11)
    obs = torch.rand(256, 2) * 2 - 1
    with torch.no_grad():
        actions = cascade.sample(obs, noise=torch.randn(256, 2))[0]
    return {k: v.clone() for k, v in cascade.state_dict().items()}, actions


def assert_same_policy(before, after):
    (state, actions), (state_after, actions_after) = before, after
    assert list(state) == list(state_after)
    assert all(torch.equal(state[k], state_after[k]) for k in state)
    assert torch.equal(actions, actions_after)


def corrupt_members(critic, members: slice) -> None:
    """Turn ``members`` of the critic into ``−Q``: their last layer's weights and biases negated."""
    last = critic.q.net[-1]
    with torch.no_grad():
        last.weight[members] *= -1
        last.bias[members] *= -1


@pytest.mark.parametrize("corrupted", [False, True])
def test_gate_rejects_a_block_trained_against_a_corrupted_critic(bandit_bc, tmp_path, corrupted):
    """A live block trained to climb critic members turned into −Q must be rejected by the held-out member,
    leaving the policy bit for bit and halving τ; the same block trained on the honest critic is accepted
    (so the gate is not simply shut)."""
    learner = bandit_learner(bandit_bc, 600, block_every=10_000)  # one judgement, at the end of the run
    learner.learn(total_env_steps=600, out=tmp_path / "run", num_envs=4, eval_every=600, eval_episodes=16)
    if corrupted:
        corrupt_members(learner.critic, learner.objective_members)
    before, tau = policy_snapshot(learner._policy), learner.tau
    counts, blocks = dict(learner.counts), learner._policy.cascade.num_blocks
    for _ in range(300):
        obs, prefix = learner.pool.sample(256, learner.rng)
        learner.live.step(obs, prefix, learner.objective_q, learner.alpha)
    verdict = learner.improve()
    if corrupted:
        assert verdict["block_accepted"] == 0 and verdict["block_gate_free_energy"] == 0, verdict
        assert verdict["block_heldout_delta_free_energy"] > 0 > verdict["block_delta_free_energy"], verdict
        assert_same_policy(before, policy_snapshot(learner._policy))
        assert learner.tau == pytest.approx(tau / 2) and learner.counts["rejected"] == counts["rejected"] + 1
        fresh = learner.live.block.field.net[-1]  # the live block was reset to the identity
        assert not fresh.weight.any() and not fresh.bias.any()
    else:
        assert verdict["block_accepted"] == 1, verdict
        assert learner._policy.cascade.num_blocks == blocks + 1


def test_live_step_cost_does_not_grow_with_the_chain():
    """A live step reads (s, a ~ π_n) from the pool, so its graph is the block's alone (the same bytes for
    K = 4 and 32 Euler steps, with 0 or 8 earlier blocks) and it never evaluates the chain: the base flow
    and the earlier blocks are not called once. (Its time is measured by ``swfp bench compute``.)"""
    torch.manual_seed(0)
    states = 2 * torch.rand(1024, 2) - 1
    earlier = [JKOBlock(2, 2, BlockConfig()) for _ in range(8)]
    for block in earlier:  # real maps, not identities
        nn.init.normal_(block.field.net[-1].weight, std=0.1)
    block_config = BlockConfig(hidden_dims=(128, 128), tau=0.1, box_weight=10.0)

    def q_fn(obs, actions):
        return -(actions - 0.5 * obs).pow(2).sum(-1)

    memory = {}
    for k in (4, 32):
        for n in (0, 8):
            cascade = Cascade(FlowPolicy(2, 2, FlowConfig(hidden_dims=(64, 64), num_steps=k)), earlier[:n])
            pool = PrefixPool(2, 2, 1024)
            with torch.no_grad():
                pool.add(states, cascade.sample(states)[0])
            pool.redraw(cascade)
            calls = []
            hooks = [m.register_forward_hook(lambda *_: calls.append(1))
                     for m in (cascade.base.velocity, *cascade.blocks)]
            live, rng = LiveBlock(2, 2, block_config), np.random.default_rng(0)
            memory[k, n] = saved_graph_bytes(live.loss(*pool.sample(256, rng), q_fn, 0.01)[0])
            for _ in range(3):
                live.step(*pool.sample(256, rng), q_fn, 0.01)
            for hook in hooks:
                hook.remove()
            assert not calls, (k, n, len(calls))
    assert len(set(memory.values())) == 1, memory  # equality: the pool carries no graph


def test_tau_adaptation_holds_w2_near_the_radius_and_entropy_is_tracked_exactly(bandit_bc, tmp_path):
    """On the bandit, τ starts at 0.1 and the radius is δ = 0.03: the first block moves actions by far more
    than δ, and after a few blocks every block's measured W₂ lies near δ. Without compaction the entropy
    tracked block by block, ``H(π_n) = H(π_0) + Σ E log|det ∂T|``, matches the cascade's exact estimate."""
    radius = 0.03
    learner = bandit_learner(bandit_bc, 3000, tau=0.1, tau_radius=radius, block_every=200, td_jump=None,
                             q_scale_jump=None)
    out = tmp_path / "run"
    learner.learn(total_env_steps=3000, out=out, num_envs=4, eval_every=1000, eval_episodes=16)
    blocks = read_csv(out / "blocks.csv")  # one row per judged block
    w2 = [r["w2_upper"] for r in blocks if r["accepted"]]
    assert len(w2) >= 10, blocks
    assert w2[0] > 2 * radius, w2
    assert all(0.4 * radius < w < 1.6 * radius for w in w2[5:]), w2
    states = learner._policy.normalize_obs(learner.replay.online.sample(4096, learner.rng).observations)
    exact = learner.exact_entropy(states, samples=8192)
    assert learner.entropy == pytest.approx(exact, abs=0.1), (learner.entropy, exact)
    assert learner.entropy < blocks[0]["entropy"] - 0.3  # the blocks did change the entropy


def nested_equal(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(nested_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(nested_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b))


def test_resume_mid_block_restores_the_live_block_exactly(bandit_bc, tmp_path):
    """A learner checkpointed in the middle of a block and loaded into a fresh learner holds the same live
    block, optimiser, pool, temperature and schedule state, and its next updates are identical."""
    learner = bandit_learner(bandit_bc, 700, block_every=400)
    learner.learn(total_env_steps=700, out=tmp_path / "run", num_envs=4, eval_every=700, eval_episodes=16)
    assert learner.counts["accepted"] + learner.counts["rejected"] == 1  # judged at 400, mid-block at 700
    assert learner.live.block.field.net[-1].weight.any()  # the live block has moved since
    buffer = io.BytesIO()
    torch.save(learner.state_dict(), buffer)
    buffer.seek(0)
    resumed = bandit_learner(bandit_bc, 700, block_every=400)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert nested_equal(resumed.state_dict(), learner.state_dict())
    for agent in (learner, resumed):
        torch.manual_seed(5)
        for _ in range(3):
            agent.update(agent.sample_batch())
    assert nested_equal(resumed.live.state_dict(), learner.live.state_dict())
    assert resumed.alpha == learner.alpha and resumed.q_scale == learner.q_scale


def test_box_term_pulls_out_of_box_components_back_with_the_density_exact():
    """Prefix actions outside [-1, 1] under a critic that is flat there (it sees clip(a)): without the box
    term nothing moves them; with it they come back toward the box, and the block stays invertible."""
    torch.manual_seed(0)
    obs = torch.zeros(512, 1)
    prefix = torch.full((512, 2), 1.4) + 0.05 * torch.randn(512, 2)

    def flat_q(obs, actions):
        return -(actions.clamp(-1, 1) - 1).pow(2).sum(-1)  # maximal at the box corner: zero gradient outside

    moved = {}
    for weight in (0.0, 10.0):
        live = LiveBlock(1, 2, BlockConfig(hidden_dims=(32, 32), tau=0.1, box_weight=weight, lr=3e-3))
        for _ in range(300):
            live.step(obs, prefix, flat_q, 0.0)
        with torch.no_grad():
            moved[weight] = live.block(obs, prefix)
        metrics = measure_block(live.block, obs, prefix, flat_q, 0.0)
        assert metrics["invertible"]
    assert (moved[0.0] - prefix).abs().max() < 1e-3
    assert (moved[10.0] - 1).abs().mean() < 0.5 * (prefix - 1).abs().mean()


def test_temperature_moves_toward_the_target_entropy():
    temperature = Temperature(0.1, target=-2.0, lr=0.01)
    for _ in range(50):
        temperature.update(0.5)  # entropy above the target: α falls
    assert temperature.alpha < 0.1 * math.exp(-0.3)
    fixed = Temperature(0.0, target=None)
    fixed.update(0.5)
    assert fixed.alpha == 0.0
    with pytest.raises(ValueError, match="alpha"):
        Temperature(0.0, target=-1.0)


def test_critic_entropy_term_uses_alpha_in_raw_q_units(bandit_bc, tmp_path):
    """The blocks' α multiplies Q/scale; the critic target's entropy term uses α·scale (the same temperature
    in raw-Q units), and the exact target log-density includes the live block's log-det."""
    learner = bandit_learner(bandit_bc, 400, critic_entropy="exact", block_every=10_000)
    learner.learn(total_env_steps=400, out=tmp_path / "run", num_envs=4, eval_every=400, eval_episodes=16)
    assert learner.critic_alpha() == pytest.approx(learner.alpha * learner.q_scale)
    obs = learner._policy.normalize_obs(learner.replay.online.sample(64, learner.rng).observations)
    torch.manual_seed(3)
    with torch.no_grad():
        actions, log_prob = learner.target_actions(obs)
    exact = learner.policy().cascade.log_prob(obs, actions)
    assert torch.allclose(log_prob, exact, atol=1e-3), (log_prob - exact).abs().max()


def test_config_rejects_inconsistent_settings():
    with pytest.raises(ValueError, match="objective_members"):
        swfp.SWFPConfig(objective_members=5)
    with pytest.raises(ValueError, match="schedule"):
        swfp.SWFPConfig(schedule="weekly")
    with pytest.raises(ValueError, match="langevin_fm"):
        swfp.SWFPConfig(objective="langevin_fm", block_sub_steps=2)
    assert swfp.SWFPConfig(schedule="batched", objective="langevin_fm", block_sub_steps=2).schedule == "batched"
    with pytest.raises(ValueError, match="td_jump"):
        swfp.SWFPConfig(td_jump=0)


def test_batched_schedule_is_the_first_schedule_on_the_same_pool_and_gate(bandit_bc, tmp_path):
    """``schedule="batched"``: the policy is π_n between blocks (no live block), each block is trained for J
    steps at its judgement, then judged by the same gate."""
    learner = bandit_learner(bandit_bc, 800, schedule="batched", block_every=200, block_grad_steps=100)
    learner.learn(total_env_steps=800, out=tmp_path / "run", num_envs=4, eval_every=800, eval_episodes=16)
    assert learner.live is None and learner.policy() is learner._policy
    rows = read_csv(tmp_path / "run" / "blocks.csv")
    assert len(rows) == 4 and all(r.get("step_time_s") is not None for r in rows)
    assert learner.counts["accepted"] + learner.counts["rejected"] == len(rows)


def test_proximal_fraction_tells_an_undertrained_block_from_a_trained_one():
    """The fraction of the proximal optimum reached: a block trained 20 steps is far from it, one trained as
    long as the reference reaches about all of it (same objective, held-out pairs)."""
    torch.manual_seed(0)
    obs, prefix = 2 * torch.rand(4096, 2) - 1, 0.3 * torch.randn(4096, 2) - 0.5
    heldout = 2 * torch.rand(512, 2) - 1, 0.3 * torch.randn(512, 2) - 0.5

    def q_fn(s, a):
        return -(a - 0.5 * s).pow(2).sum(-1) / 2

    fractions = {}
    for steps in (20, 2000):
        config = BlockConfig(hidden_dims=(64, 64), tau=0.2, alpha=0.01, lr=1e-3, grad_steps=steps)
        block = JKOBlock(2, 2, config)
        train_block(block, obs, prefix, q_fn, config, torch.Generator().manual_seed(1))
        fractions[steps] = proximal_fraction(block, obs, prefix, *heldout, q_fn, 0.01, steps=2000, lr=1e-3,
                                             generator=torch.Generator().manual_seed(2))
    assert fractions[20] < 0.6 and 0.9 < fractions[2000] < 1.1, fractions


def test_proximal_check_is_logged_and_leaves_the_run_unchanged(bandit_bc, tmp_path):
    """The proximal-fraction diagnostic trains a reference block at judgement time; the run's random streams
    are left alone, so the same seed gives the same policy with and without it."""
    policies = {}
    for check in (None, 1):
        torch.manual_seed(0)  # the networks' initialisation
        learner = bandit_learner(bandit_bc, 400, block_every=200, proximal_check_every=check)
        out = tmp_path / f"check-{check}"
        learner.learn(total_env_steps=400, out=out, num_envs=4, eval_every=400, eval_episodes=16)
        policies[check] = policy_snapshot(learner.policy())
        fractions = [r.get("proximal_fraction") for r in read_csv(out / "blocks.csv")]
        assert all(f is None for f in fractions) if check is None else all(f is not None for f in fractions)
    assert_same_policy(policies[None], policies[1])
