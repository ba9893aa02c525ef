"""A robust output transform: any finite values in, well-scaled values out.

The GP's ``Standardize`` transform subtracts the mean and divides by the standard
deviation; with values near the ends of float64 (``±1e308``) those overflow to ``inf``
and the fit sees NaN, and one huge outlier among ordinary values squeezes every other
value to the same number. :func:`robust_standardize` maps `n` finite float64 values to
`n` values in ``[-LIMIT, LIMIT]`` that keep their order:

1. divide by the largest magnitude, so every value lies in ``[-1, 1]`` and no later
   difference can overflow;
2. centre on the median and scale by the median absolute deviation (times 1.4826, the
   normal-consistent factor; the mean absolute deviation when more than half the values
   are equal, and all zeros when every value is equal);
3. squash the tails: beyond ``KNEE`` robust standard deviations a value grows only
   logarithmically, and nothing exceeds ``LIMIT``.

Values within a few deviations of the median are transformed linearly, so the model of
ordinary data is unchanged up to an affine map, which the GP's own ``Standardize`` undoes.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: Robust standard deviations beyond which values are compressed logarithmically.
KNEE = 3.0
#: No transformed value exceeds this magnitude.
LIMIT = 10.0
_MAD_TO_STD = 1.4826


def robust_standardize(y: Tensor) -> Tensor:
    """The transform of the module docstring for `n` finite values (float64, `n`)."""
    y = y.double().reshape(-1)
    if y.numel() == 0:
        return y.clone()
    scale = y.abs().max()
    if not torch.isfinite(scale) or scale == 0:
        # Non-finite values never reach the engine (observe() refuses them); all zeros.
        return torch.nan_to_num(torch.zeros_like(y))
    u = y / scale
    centre = u.median()
    dev = (u - centre).abs()
    spread = _MAD_TO_STD * dev.median()
    if spread == 0:
        spread = dev.mean()
    if spread == 0:
        return torch.zeros_like(y)
    z = (u - centre) / spread
    z = torch.nan_to_num(z, nan=0.0, posinf=LIMIT, neginf=-LIMIT)
    over = (z.abs() - KNEE).clamp(min=0.0)
    z = torch.where(over > 0, torch.sign(z) * (KNEE + torch.log1p(over)), z)
    return z.clamp(-LIMIT, LIMIT)
