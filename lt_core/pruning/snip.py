"""SNIP (Lee et al. 2019): connection sensitivity |g ⊙ w|, the gradient of the training loss
summed over ``score_batches`` random batches of the training split, at the point of pruning
(with the network in training mode, pruned weights zero)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lt_core.pruning.base import Criterion, ScoreContext, Scores


class Snip(Criterion):
    def scores(self, context: ScoreContext) -> Scores:
        model, train = context.model, context.data.train
        model.train()
        model.zero_grad()
        for _ in range(context.batches):
            chosen = torch.randperm(len(train), generator=context.generator)[:context.batch_size]
            chosen = chosen.to(train.x.device)
            F.cross_entropy(model(train.x[chosen]), train.y[chosen]).backward()
        params = dict(model.named_parameters())
        return {name: (params[name].grad * params[name]).detach().abs()
                for name in context.masks}
