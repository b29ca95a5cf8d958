"""Tests for SWFP's JKO blocks and the cascade (swfp.blocks, swfp.cascade).

Run with ``OMP_NUM_THREADS=1``. Most tests share one analytic problem, a contextual bandit whose
entropic optimum is known in closed form:

    s ~ U[-1, 1]²,   Q(s, a) = −‖a − μ(s)‖²/(2σ_r²),   μ(s) = s/2,   σ_r = 1,   α = 0.01
    π*(·|s) ∝ exp(Q/α) = N(μ(s), α σ_r² I)   (std 0.1),   F* = min F = −α log Z = −α·log(2π α σ_r²) ≈ 0.0277

and a base flow fitted to the mis-placed, state-independent N(−0.5, 0.3² I).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.autograd.graph import saved_tensors_hooks

from swfp.blocks import LOSSES, BlockConfig, JKOBlock, adapt_tau, train_block
from swfp.cascade import Cascade, accept_if_improves, compact, draw_pool, refine
from swfp.compute import saved_graph_bytes
from swfp.flow import FlowConfig, FlowPolicy

ALPHA, SIGMA_R = 0.01, 1.0
OPTIMUM_COV = ALPHA * SIGMA_R ** 2 * torch.eye(2)
F_STAR = -ALPHA * math.log(2 * math.pi * ALPHA * SIGMA_R ** 2)
PROBE_STATES = torch.tensor([[0.0, 0.0], [0.8, -0.6], [-0.9, 0.7]])  # centre, and near two corners


def mu(obs: torch.Tensor) -> torch.Tensor:
    return 0.5 * obs


def bandit_q(obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    return -(actions - mu(obs)).pow(2).sum(-1) / (2 * SIGMA_R ** 2)


def uniform_states(n: int, generator: torch.Generator) -> torch.Tensor:
    return 2 * torch.rand(n, 2, generator=generator) - 1


def sqrtm(c: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh(c)
    return v @ torch.diag(w.clamp(min=0).sqrt()) @ v.T


def gaussian_w2(m1: torch.Tensor, c1: torch.Tensor, m2: torch.Tensor, c2: torch.Tensor) -> float:
    """Closed-form W₂ between Gaussians: ``‖m1 − m2‖² + tr(C1 + C2 − 2(C2^½ C1 C2^½)^½)``."""
    m1, c1, m2, c2 = (x.double() for x in (m1, c1, m2, c2))
    root = sqrtm(c2)
    w2_sq = (m1 - m2).pow(2).sum() + torch.trace(c1 + c2 - 2 * sqrtm(root @ c1 @ root))
    return math.sqrt(max(w2_sq.item(), 0.0))


def moment_w2(x: torch.Tensor, y: torch.Tensor) -> float:
    """W₂ between the Gaussians with the sample means and covariances of ``x`` and ``y``."""
    return gaussian_w2(x.mean(0), torch.cov(x.T), y.mean(0), torch.cov(y.T))


@torch.no_grad()
def probe_samples(policy, n: int = 2000, seed: int = 123) -> list[torch.Tensor]:
    """``n`` actions per probe state, from noise fixed by ``seed`` (common random numbers across policies)."""
    gen = torch.Generator().manual_seed(seed)
    return [policy.sample(s.expand(n, 2), noise=torch.randn(n, 2, generator=gen))[0] for s in PROBE_STATES]


def w2_to_optimum(policy) -> float:
    """Mean over the probe states of W₂(moment-matched policy, π*)."""
    return sum(gaussian_w2(x.mean(0), torch.cov(x.T), mu(s), OPTIMUM_COV)
               for x, s in zip(probe_samples(policy), PROBE_STATES)) / len(PROBE_STATES)


@torch.no_grad()
def free_energy(cascade: Cascade, n: int = 4096) -> float:
    """``F = E_s E_{a~π}[−Q(s, a) + α log π(a|s)]`` with the cascade's exact log-density, fixed states and noise."""
    gen = torch.Generator().manual_seed(321)
    obs = uniform_states(n, gen)
    actions, log_prob = cascade.sample(obs, noise=torch.randn(n, 2, generator=gen), with_log_prob=True)
    return (-bandit_q(obs, actions) + ALPHA * log_prob).mean().item()


def fit_misplaced_base(seed: int = 0) -> FlowPolicy:
    """A real FlowPolicy fitted by flow matching to N(−0.5, 0.3² I), whatever the state."""
    torch.manual_seed(seed)
    base = FlowPolicy(2, 2, FlowConfig(hidden_dims=(64, 64), time_embed_dim=16, num_steps=10))
    optimizer = torch.optim.Adam(base.parameters(), lr=3e-3)
    for _ in range(600):
        obs, actions = 2 * torch.rand(256, 2) - 1, -0.5 + 0.3 * torch.randn(256, 2)
        loss = base.flow_matching_loss(obs, actions)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return base.requires_grad_(False).eval()


# τ = 0.5: the JKO step on the Gaussian mean contracts ‖m − μ‖ by 1/(1 + τ) = 2/3 per block.
BANDIT_BLOCK = BlockConfig(tau=0.5, alpha=ALPHA, lr=1e-3, grad_steps=200, pool_size=8192)
NUM_BLOCKS = 8


@pytest.fixture(scope="module")
def bandit():
    """The base flow, and a cascade grown from it by NUM_BLOCKS SWFP steps with the true Q (~10 s)."""
    base = fit_misplaced_base()
    gen = torch.Generator().manual_seed(0)
    train_states, heldout_states = uniform_states(8192, gen), uniform_states(4096, gen)
    cascade = Cascade(copy.deepcopy(base))
    w2, free, steps = [w2_to_optimum(cascade)], [free_energy(cascade)], []
    torch.manual_seed(0)
    for _ in range(NUM_BLOCKS):
        steps.append(refine(cascade, train_states, heldout_states, bandit_q, BANDIT_BLOCK, gen))
        w2.append(w2_to_optimum(cascade))
        free.append(free_energy(cascade))
    return SimpleNamespace(base=base, cascade=cascade, w2=w2, free=free, steps=steps,
                           train_states=train_states, heldout_states=heldout_states)


# --- 1. analytic JKO check -------------------------------------------------------------------------

def test_jko_blocks_converge_to_the_entropic_optimum(bandit):
    assert all(step["accepted"] for step in bandit.steps) and bandit.cascade.num_blocks == NUM_BLOCKS

    # (a) W₂ to π*, mean over the probe states. Measured: 0.835 (base) → 0.551, 0.364, 0.242, 0.161,
    # 0.103, 0.067, 0.044, 0.030: ×0.64–0.69 per block, the exact JKO contraction 1/(1 + τ) = 0.67 of
    # the mean. Eight such steps give 0.67⁸ = 0.04 of the start; 0.1 allows blocks ~25% short of
    # the exact step each (0.75⁸ = 0.1), while a wrong sign or scale in any term stalls far above.
    # The sampling floor (2000 samples at std 0.1) is ~0.005.
    assert all(later < earlier for earlier, later in zip(bandit.w2, bandit.w2[1:])), bandit.w2
    assert bandit.w2[-1] < 0.1 * bandit.w2[0], bandit.w2

    # (b) Free energy with the exact cascade log-density. The same states and noise at every
    # block (common random numbers), so consecutive values differ by a paired estimate of ΔF
    # whose standard error is ~5% of the decrease (measured 2.5e-5 against 5e-4 at the last block).
    # Measured: 0.378 → 0.180, 0.093, 0.056, 0.040, 0.033, 0.030, 0.0286, 0.0281, against the
    # closed-form minimum F* = 0.0277: F − F* from 0.35 to 4e-4 (asserted < 1% of the start, i.e. a
    # mean error below ~0.08). F − F* = α·KL(π ‖ π*) ≥ 0, so F may not fall below F* beyond
    # Monte-Carlo noise (4096 samples; the spread of −Q + α log π vanishes at π*): 2e-3 allows it.
    assert all(later < earlier for earlier, later in zip(bandit.free, bandit.free[1:])), bandit.free
    assert all(step["delta_free_energy"] < 0 for step in bandit.steps)
    assert bandit.free[-1] - F_STAR < 0.01 * (bandit.free[0] - F_STAR), (bandit.free, F_STAR)
    assert min(bandit.free) > F_STAR - 2e-3, (bandit.free, F_STAR)
    # The density-free ΔF of measure_block (held-out pairs) against the difference of exact-density
    # free energies (other samples): two estimates of the same change, each with a ~5% standard
    # error. Measured within 0.2–5%; 20% (+1e-4, four standard errors at the last block) is ~3σ.
    for step, earlier, later in zip(bandit.steps, bandit.free, bandit.free[1:]):
        assert step["delta_free_energy"] == pytest.approx(later - earlier, rel=0.2, abs=1e-4)

    # (c) The trust-region certificate on held-out states: measured w2_upper / trust_bound 0.63–0.66
    # for every block (w2_upper 0.28 → 0.015, trust_bound 0.45 → 0.023), i.e. the held-out objective
    # gap is well below 0, so no slack is needed.
    for step in bandit.steps:
        assert step["w2_upper"] <= step["trust_bound"], step
        assert step["objective_gap"] < 0, step


# --- 2. O(1) block cost -----------------------------------------------------------------------------

def hooked_saved_bytes(fn) -> tuple[int, torch.Tensor]:
    """Bytes of the distinct tensors autograd saves while ``fn()`` runs, via ``saved_tensors_hooks``."""
    seen = {}

    def pack(t):
        seen[(t.untyped_storage().data_ptr(), t.storage_offset(), t.shape)] = t.nbytes
        return t

    with saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(seen.values()), out


def test_block_training_cost_does_not_grow_with_the_chain():
    torch.manual_seed(0)
    states = 2 * torch.rand(1024, 2) - 1
    flow_config = FlowConfig(hidden_dims=(64, 64), time_embed_dim=16)
    bases = {k: FlowPolicy(2, 2, dataclasses.replace(flow_config, num_steps=k)) for k in (4, 32)}
    earlier = [JKOBlock(2, 2, BlockConfig()) for _ in range(8)]
    for block in earlier:  # make them real maps, not identities
        nn.init.normal_(block.field.net[-1].weight, std=0.1)
    config = BlockConfig(grad_steps=50, pool_size=1024)

    memory, step_time = {}, {}
    for _ in range(2):  # two interleaved rounds; keep each setting's fastest median (the machine is shared)
        for k in (4, 32):
            for n in (0, 8):
                cascade = Cascade(copy.deepcopy(bases[k]), earlier[:n])
                gen = torch.Generator().manual_seed(0)
                block = JKOBlock(2, 2, config)
                obs, actions = draw_pool(cascade, states, gen, config.pool_size)
                assert not actions.requires_grad
                # One training loss, on a minibatch of the pool, as train_block computes it.
                memory[k, n] = saved_graph_bytes(LOSSES[config.objective](block, obs[:256], actions[:256], bandit_q,
                                                                          config.alpha, gen))
                median = train_block(block, obs, actions, bandit_q, config, gen)["step_time_s"]
                step_time[k, n] = min(step_time.get((k, n), math.inf), median)
    # Measured: 1,765,924 bytes in every setting (the pool carries no graph, so the loss's graph is the
    # block's alone: equality, not a ratio); median step 3.8–3.9 ms in every setting.
    assert len(set(memory.values())) == 1, memory
    assert max(step_time.values()) < 2 * min(step_time.values()), step_time

    # The contrast: −Q back-propagated through the whole base chain (what full-chain fine-tuning does)
    # saves every step's activations. Measured 1.68 MB at K = 4 and 13.3 MB at K = 32 (7.9×).
    full = {}
    for k, base in bases.items():
        obs = states[:256]
        hooked, loss = hooked_saved_bytes(lambda: -bandit_q(obs, base.sample(obs)[0]).mean())
        full[k] = saved_graph_bytes(loss)
        # The graph walk agrees with saved_tensors_hooks (measured: to 40 of 1.7 M bytes, a few 0-dim
        # scalars autograd wraps on the fly).
        assert full[k] == pytest.approx(hooked, rel=1e-3)
        loss.backward()
    assert full[32] >= 4 * full[4], full
    # A block step (its D Jacobians included) costs about one 4-step chain pass: 7.5× below K = 32.
    assert 4 * memory[32, 8] < full[32], (memory, full)


# --- 3. rejection leaves the cascade untouched ------------------------------------------------------

def cascade_snapshot(cascade: Cascade) -> tuple[dict, torch.Tensor, torch.Tensor]:
    torch.manual_seed(7)
    obs = 2 * torch.rand(512, 2) - 1
    with torch.no_grad():
        actions, log_prob = cascade.sample(obs, with_log_prob=True)
    return {k: v.clone() for k, v in cascade.state_dict().items()}, actions, log_prob


def assert_same_snapshot(before, after):
    (state, actions, log_prob), (state_after, actions_after, log_prob_after) = before, after
    assert list(state) == list(state_after)
    assert all(torch.equal(state[k], state_after[k]) for k in state)
    assert torch.equal(actions, actions_after) and torch.equal(log_prob, log_prob_after)


def test_worsening_or_nan_block_is_rejected_and_cascade_unchanged(bandit):
    cascade = Cascade(copy.deepcopy(bandit.base), [copy.deepcopy(b) for b in bandit.cascade.blocks[:2]])
    before = cascade_snapshot(cascade)
    gen = torch.Generator().manual_seed(1)
    obs, actions = draw_pool(cascade, bandit.heldout_states, gen)

    # A block trained to MINIMISE Q, measured with Q: its ΔF is positive (measured +0.17).
    config = dataclasses.replace(BANDIT_BLOCK, grad_steps=100)
    worse = JKOBlock(2, 2, config)
    train_block(worse, *draw_pool(cascade, bandit.train_states, gen, config.pool_size),
                lambda s, a: -bandit_q(s, a), config, gen)
    result = accept_if_improves(cascade, worse, obs, actions, bandit_q, ALPHA)
    assert result["delta_free_energy"] > 0 and not result["accepted"], result
    assert cascade.num_blocks == 2

    # A block whose map is NaN.
    broken = JKOBlock(2, 2, config)
    with torch.no_grad():
        broken.field.net[-1].bias.fill_(math.nan)
    result = accept_if_improves(cascade, broken, obs, actions, bandit_q, ALPHA)
    assert not result["accepted"] and not result["invertible"] and math.isnan(result["delta_free_energy"])

    # The whole refinement step, with a critic that returns NaN: training diverges, nothing is appended.
    result = refine(cascade, bandit.train_states, bandit.heldout_states, lambda s, a: bandit_q(s, a) * math.nan,
                    dataclasses.replace(config, grad_steps=5), gen)
    assert not result["accepted"]
    assert_same_snapshot(before, cascade_snapshot(cascade))


# --- 4. inversion and density ----------------------------------------------------------------------

def random_cascade() -> Cascade:
    """A random base (K = 5) and three random blocks (sub_steps 1, 2, 1); every map a bijection."""
    torch.manual_seed(4)
    base = FlowPolicy(2, 2, FlowConfig(hidden_dims=(32, 32), time_embed_dim=8, num_steps=5))
    blocks = []
    for sub_steps in (1, 2, 1):
        block = JKOBlock(2, 2, BlockConfig(hidden_dims=(32, 32), sub_steps=sub_steps, tau=0.5))
        # Measured max (τ/M)·‖∂u/∂x‖₂ over 2000 states and actions ~N(0, 1.5² I): 0.28, 0.37, 0.46 < 1.
        nn.init.normal_(block.field.net[-1].weight, std=3.0)
        nn.init.normal_(block.field.net[-1].bias, std=0.3)
        blocks.append(block)
    return Cascade(base, blocks)


def test_cascade_density_is_consistent_and_normalised():
    cascade = random_cascade()
    obs, noise = 2 * torch.rand(256, 2) - 1, torch.randn(256, 2)
    with torch.no_grad():
        actions, sample_log_prob = cascade.sample(obs, noise=noise, with_log_prob=True)
        base_actions, base_log_prob = cascade.base.sample(obs, noise=noise, with_log_prob=True)
        # The blocks really move the actions and change the density (measured: 1.56 and 0.11 on average).
        assert (actions - base_actions).norm(dim=-1).mean() > 0.5
        assert (sample_log_prob - base_log_prob).abs().mean() > 0.05
        # Log-density accumulated while sampling = log_prob of those actions (inversion of every map).
        torch.testing.assert_close(cascade.log_prob(obs, actions), sample_log_prob, atol=1e-4, rtol=0)
        # Each block's inverse undoes it.
        x = base_actions
        for block in cascade.blocks:
            y = block(obs, x)
            torch.testing.assert_close(block.inverse(obs, y), x, atol=1e-4, rtol=0)
            x = y
        # ... and the density integrates to 1 (one state; grid spacing 0.1 over [-7, 7]², samples have
        # std 0.7–1.5 and range within ±6.4 in 20000). Measured 1.000; without the blocks' log-dets
        # 1.12, with their signs flipped 1.26.
        s = obs[:1]
        points = torch.stack(torch.meshgrid(*[torch.linspace(-7, 7, 141)] * 2, indexing="ij"), -1).reshape(-1, 2)
        mass = cascade.log_prob(s.expand(len(points), 2), points).exp().sum().item() * 0.1 ** 2
        samples, _ = cascade.sample(s.expand(4000, 2))
    assert (samples.abs() > 7).any(-1).float().mean() < 1e-3  # the grid holds the mass
    assert mass == pytest.approx(1.0, abs=0.01)


def test_block_log_det_matches_autograd_jacobian():
    """``forward_log_det`` against the brute-force Jacobian of ``forward`` (M = 1 and M = 2)."""
    blocks = random_cascade().blocks  # seeds the RNG
    obs, x = 2 * torch.rand(6, 2) - 1, torch.randn(6, 2)
    for block in blocks:
        moved, log_det = block.forward_log_det(obs, x)
        torch.testing.assert_close(moved, block(obs, x))
        for i in range(len(x)):
            jac = torch.autograd.functional.jacobian(lambda a: block(obs[i:i + 1], a[None])[0], x[i])
            torch.testing.assert_close(log_det[i], torch.linalg.slogdet(jac).logabsdet, atol=1e-5, rtol=0)
        assert log_det.abs().max() > 0.01  # non-trivial maps: 1000× the tolerance


# --- 5. Langevin flow-matching ablation ------------------------------------------------------------

def test_langevin_fm_moves_toward_the_optimum_and_needs_two_sub_steps(bandit):
    with pytest.raises(ValueError, match=r"sub_steps >= 2.*averages the Langevin noise away"):
        BlockConfig(objective="langevin_fm", sub_steps=1)
    config = dataclasses.replace(BANDIT_BLOCK, objective="langevin_fm", sub_steps=2)
    cascade = Cascade(copy.deepcopy(bandit.base))
    gen = torch.Generator().manual_seed(2)
    torch.manual_seed(2)
    w2 = [w2_to_optimum(cascade)]
    for _ in range(3):
        refine(cascade, bandit.train_states, bandit.heldout_states, bandit_q, config, gen)
        w2.append(w2_to_optimum(cascade))
    # Measured 0.835 → 0.397, 0.180, 0.103: explicit Langevin steps halve the mean error (1 − τ = 0.5)
    # per block (0.5³ = 0.125). Asserted: three accepted blocks, W₂ falling, below 30% of the start.
    assert cascade.num_blocks == 3
    assert all(later < earlier for earlier, later in zip(w2, w2[1:])) and w2[-1] < 0.3 * w2[0], w2


# --- 6. compaction ---------------------------------------------------------------------------------

def test_compaction_distils_the_cascade_into_one_flow(bandit):
    gen = torch.Generator().manual_seed(3)
    torch.manual_seed(3)
    new_base = compact(bandit.cascade, bandit.train_states, steps=400, batch_size=256, lr=1e-3, generator=gen)
    compacted = Cascade(new_base)
    assert compacted.num_blocks == 0 and bandit.cascade.num_blocks == NUM_BLOCKS
    # Probe states (not where the flows were fitted: those are random), independent noise on each side.
    target = probe_samples(bandit.cascade)
    before = [moment_w2(x, y) for x, y in zip(probe_samples(bandit.base, seed=4), target)]
    after = [moment_w2(x, y) for x, y in zip(probe_samples(new_base, seed=4), target)]
    # Measured per state: base-vs-cascade W₂ 0.70–0.90 before, compacted-vs-cascade 0.019–0.033 after
    # (the cascade against itself with other noise: 0.005–0.008, the sampling floor). Asserted: below
    # 0.1× the smallest distance before (~0.07, 2× the measured worst), i.e. within the cascade's
    # own std of 0.1 at every state.
    assert max(after) < 0.1 * min(before), (before, after)

    # The same noise gives the same action: compaction keeps the cascade's noise-to-action map, not only
    # its distribution (the deterministic policy, x0 = 0, included).
    noise = torch.randn(4096, 2, generator=gen)
    with torch.no_grad():
        cascade_actions = bandit.cascade.sample(bandit.heldout_states, noise=noise)[0]
        blocks_move = (cascade_actions - bandit.base.sample(bandit.heldout_states, noise=noise)[0]).norm(dim=-1)
        paired = (new_base.sample(bandit.heldout_states, noise=noise)[0] - cascade_actions).norm(dim=-1)
        deterministic = (compacted.sample(bandit.heldout_states, deterministic=True)[0]
                         - bandit.cascade.sample(bandit.heldout_states, deterministic=True)[0]).norm(dim=-1)
    # Measured: the blocks move actions by 0.742 on average; compacted vs cascade, same noise, 0.030
    # (deterministic 0.020). Asserted: below 10 % of the move.
    assert paired.mean() < 0.1 * blocks_move.mean() and deterministic.mean() < 0.1 * blocks_move.mean()


def test_compaction_keeps_the_flow_where_the_blocks_did_not_move_it():
    """A cascade whose only block is still the identity compacts to its own base, exactly.

    Flow matching on ``(s, a ~ π_n)`` pairs with independent noise does not: its regression target is
    noisy even at its optimum, so every step moves the flow (measured here: 0.049 from the cascade's
    actions after these 400 steps; on a Walker2d-v5 cascade it undid its 7 blocks' improvement)."""
    base = fit_misplaced_base()
    cascade = Cascade(copy.deepcopy(base), [JKOBlock(2, 2, BANDIT_BLOCK)])
    gen = torch.Generator().manual_seed(5)
    states = uniform_states(4096, gen)
    new_base = compact(cascade, states, steps=400, batch_size=256, lr=1e-3, generator=gen)
    noise = torch.randn(4096, 2, generator=gen)
    with torch.no_grad():
        assert torch.equal(new_base.sample(states, noise=noise)[0], cascade.sample(states, noise=noise)[0])
    assert all(torch.equal(p, q) for p, q in zip(new_base.parameters(), base.parameters()))


# --- units: config, identity start, τ in the state, adapt_tau ---------------------------------------

def test_block_config_round_trips_and_validates():
    config = BlockConfig(hidden_dims=[32, 32], sub_steps=3, tau=0.2, objective="langevin_fm")
    assert config.hidden_dims == (32, 32)
    assert BlockConfig(**json.loads(json.dumps(dataclasses.asdict(config)))) == config
    for bad in ({"sub_steps": 0}, {"tau": 0.0}, {"tau": math.inf}, {"alpha": -1.0}, {"lr": 0.0},
                {"grad_steps": 0}, {"pool_size": 0}, {"objective": "ppo"}, {"hidden_dims": ()}, {"time_embed_dim": 3}):
        with pytest.raises(ValueError):
            BlockConfig(**bad)


def test_new_block_is_identity_and_saved_block_reproduces_its_map():
    obs, actions = torch.randn(32, 3), torch.randn(32, 4)
    block = JKOBlock(3, 4, BlockConfig(sub_steps=2, tau=0.3))
    moved, log_det = block.forward_log_det(obs, actions)
    assert torch.equal(moved, actions) and torch.equal(log_det, torch.zeros(32))
    nn.init.normal_(block.field.net[-1].weight, std=0.3)
    # τ travels in the state_dict: a block built with another τ reproduces the map once loaded.
    other = JKOBlock(3, 4, BlockConfig(sub_steps=2, tau=0.05))
    other.load_state_dict(block.state_dict())
    assert torch.equal(other(obs, actions), block(obs, actions)) and not torch.equal(block(obs, actions), actions)


def test_adapt_tau_steers_w2_toward_the_radius():
    assert adapt_tau(0.1, w2=0.2, radius=0.1) == pytest.approx(0.05)   # twice too far: halve
    assert adapt_tau(0.1, w2=0.08, radius=0.1) == pytest.approx(0.125)  # a bit short: grow proportionally
    assert adapt_tau(0.1, w2=0.01, radius=0.1) == pytest.approx(0.2)    # clipped at ×2
    assert adapt_tau(0.1, w2=0.0, radius=0.1) == pytest.approx(0.2)
    assert adapt_tau(0.1, w2=math.nan, radius=0.1) == pytest.approx(0.05)
    with pytest.raises(ValueError):
        adapt_tau(0.1, w2=0.1, radius=0.0)
