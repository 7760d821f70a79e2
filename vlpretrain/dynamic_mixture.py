"""A seqio Mixture whose batches the trainer composes by the running per-task loss.

Seed 001 sec. 3.1 / seed 000 sec. 4.1: see `vlpretrain.mixing` for the sampler.

`DynamicMixture` is a `seqio.Mixture` (so every seqio tool reads it as one, with equal
rates), registered with `register_dynamic_mixture`.
"""
from typing import Sequence

import seqio


class DynamicMixture(seqio.Mixture):
  """A seqio Mixture with equal rates whose training batches the sampler composes."""


def register_dynamic_mixture(name: str, tasks: Sequence[str]) -> DynamicMixture:
  """Registers `tasks` (registered seqio Task names) as the dynamic mixture `name`."""
  return seqio.MixtureRegistry.add(name, list(tasks), default_rate=1.0,
                                   mixture_cls=DynamicMixture)
