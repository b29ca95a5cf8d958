"""swfp: online RL fine-tuning of flow-matching robot policies with the Stepwise Flow Policy method.

    policy = swfp.load("runs/hopper-bc")
    actions = policy.predict(obs_batch)          # numpy in, numpy out, env action units
    logp = policy.log_prob(obs_batch, actions)   # exact log-density of the Euler chain
"""

__version__ = "0.1.0"

from swfp.algorithms.swfp import SWFP, SWFPConfig  # noqa: E402  (the fine-tuning API: swfp.SWFP)

__all__ = ["SWFP", "SWFPConfig", "load", "__version__"]


def load(path):
    """Load a trained flow policy from a run directory or checkpoint file (see :class:`swfp.policy.Policy`)."""
    from swfp.policy import load as _load
    return _load(path)
