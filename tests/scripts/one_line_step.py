"""The forward and the backward on one line, failing in the forward (a Linear that expects 4 features gets 3)."""

import torch
from torch import nn
from torch.nn import functional as F

m = nn.Linear(4, 2)
x, y = torch.randn(8, 3), torch.randn(8, 2)
loss = F.mse_loss(m(x), y); loss.backward()  # noqa: E702 - one line on purpose: the frames below decide
