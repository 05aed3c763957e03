"""SynFlow (Tanaka et al. 2020): data-free synaptic saliency |θ ⊙ ∂R/∂θ| of
R = 1ᵀ (∏ |θ^[l]|) 1. That is the summed output of the network with every parameter (and
buffer) made positive, in double precision, in eval mode, on an input of ones. Re-scored over
``rounds`` (100) rounds per level on an exponential schedule, which avoids layer collapse."""

from __future__ import annotations

import copy

import torch

from lt_core.pruning.base import Criterion, ScoreContext, Scores


class SynFlow(Criterion):
    rounds = 100

    def scores(self, context: ScoreContext) -> Scores:
        model = copy.deepcopy(context.model).double().eval()
        with torch.no_grad():
            for tensor in model.state_dict().values():
                if tensor.is_floating_point():
                    tensor.abs_()
        device = next(model.parameters()).device
        ones = torch.ones((1, *context.data.input_shape), dtype=torch.float64, device=device)
        model(ones).sum().backward()
        params = dict(model.named_parameters())
        return {name: (params[name].grad * params[name]).detach().abs()
                for name in context.masks}
