"""TokenLearner (Ryoo et al. 2021, v1.1 MLP variant): a feature map -> a few learned tokens.

Two poolings (`RT1Config.token_learner_pooling`), both with the same per-token MLP:

    "softmax" (Google's TokenLearner, RT-1):
        x (N, h, w, D) --LayerNorm, per-token MLP--> logits (N, num_tokens, S), S = h*w positions
        --softmax over the S positions--> a;  tokens (N, num_tokens, D) = sum_s a[:, g, s] x[:, s]
    "mean" (robotic-transformer-pytorch 0.2.3, the original pipeline's model):
        a = per-token MLP(x) (no LayerNorm, no softmax);  tokens = mean_s a[:, g, s] x[:, s]
          = (1/S) sum_s a[:, g, s] x[:, s]

The per-token MLP has one hidden layer of D * ff_mult units for each output token. Its first layer
is one dense Linear(D, num_tokens * D * ff_mult) (the same parameters as the usual grouped 1x1
convolution applied to the input repeated num_tokens times, without materialising the repeat);
its second layer is grouped: hidden units of token g only feed the logit of token g. The "mean"
variant has no `norm` module (so no `token_learner.norm.weight` in its state_dict).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class TokenLearner(nn.Module):
    def __init__(self, dim: int, num_tokens: int = 8, ff_mult: int = 2, pooling: str = "softmax") -> None:
        super().__init__()
        self.num_tokens = num_tokens
        self.hidden = dim * ff_mult
        self.pooling = pooling
        if pooling == "softmax":
            self.norm = nn.LayerNorm(dim, bias=False)
        self.fc1 = nn.Linear(dim, num_tokens * self.hidden)
        # Grouped second layer: token g's logit = fc2_weight[g] . hidden_g + fc2_bias[g].
        bound = 1.0 / math.sqrt(self.hidden)
        self.fc2_weight = nn.Parameter(torch.empty(num_tokens, self.hidden).uniform_(-bound, bound))
        self.fc2_bias = nn.Parameter(torch.empty(num_tokens).uniform_(-bound, bound))

    def forward(self, x: Tensor) -> Tensor:
        """x (N, h, w, D) -> tokens (N, num_tokens, D)"""
        n, d = x.shape[0], x.shape[-1]
        x = x.reshape(n, -1, d)  # (N, S, D), S = h*w
        mlp_in = self.norm(x) if self.pooling == "softmax" else x
        hidden = F.gelu(self.fc1(mlp_in)).view(n, x.shape[1], self.num_tokens, self.hidden)
        logits = torch.einsum("nsgk,gk->ngs", hidden, self.fc2_weight) + self.fc2_bias[:, None]  # (N, g, S)
        if self.pooling == "softmax":
            return torch.bmm(logits.softmax(dim=-1), x)
        return torch.bmm(logits, x) / x.shape[1]
