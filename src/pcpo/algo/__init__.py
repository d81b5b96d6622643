"""The policy-gradient algebra, free of models and processes: exact log-ratios (:mod:`.logprob`),
timestep credit (:mod:`.credit`), objectives and KL terms (:mod:`.objectives`), advantage estimators
(:mod:`.advantages`), trained-step selection (:mod:`.timesteps`) and the policy step that composes
them (:mod:`.step`). Every choice is a registered name (:class:`pcpo.registry.Registry`)."""

# the peer methods register their ratio transforms, loss weights and SDE windows on import
from . import peers, windows  # noqa: E402,F401
