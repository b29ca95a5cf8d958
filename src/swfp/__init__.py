"""swfp: online RL fine-tuning of flow-matching robot policies with the Stepwise Flow Policy method.

    policy = swfp.load("runs/hopper-dsrl")       # any run: a flow cascade or another method's actor
    actions = policy.predict(obs_batch)          # numpy in, numpy out, env action units
    logp = policy.log_prob(obs_batch, actions)   # exact log-density, where the method has one

    agent = swfp.DSRL.from_pretrained("runs/hopper-bc")   # or swfp.make("dsrl", "runs/hopper-bc")
    agent.learn(total_env_steps=100_000, out="runs/hopper-dsrl")

Every method of ``swfp algos`` is a class here under its own name (``bc`` is :class:`BC`, the pre-trained
flow evaluated on the same schedule; ``sac`` is Gaussian SAC from scratch), with the same
``from_pretrained`` / ``learn`` / ``save``.
"""

__version__ = "0.1.0"

# the fine-tuning API: one class per method (bc is BC, sac is SAC from scratch) and make() by name
from swfp.algorithms import BPTT, DIPO, DSRL, FQL, RLPD, SWFP, FineTuner as BC, ReinFlow, make  # noqa: E402
from swfp.algorithms import SACFromScratch as SAC  # noqa: E402
from swfp.algorithms.swfp import SWFPConfig  # noqa: E402
from swfp.loader import load  # noqa: E402

__all__ = ["BC", "BPTT", "DIPO", "DSRL", "FQL", "RLPD", "SAC", "SWFP", "ReinFlow", "SWFPConfig", "load", "make",
           "__version__"]
