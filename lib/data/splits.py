"""Training / validation splits: of whole items, or of one volume along z.
"""

import numpy as np

# --------------------------------------------------------------------------- split

def split_indices(n, fraction, mode, seed):
    """Split ``range(n)`` into sorted train and validation index arrays.

    ``mode='random'`` draws the validation items with ``seed``; ``mode='last'``
    takes the last ``fraction`` of the items (useful for slices of a volume,
    where neighbours are nearly identical). At least one item stays in training
    and, when ``fraction > 0``, at least one goes to validation.
    """
    n_val = int(round(n * fraction))
    if fraction > 0:
        n_val = max(n_val, 1)
    if n_val >= n:
        raise ValueError(f"fraction={fraction} leaves no training image out of {n}; lower it")
    if mode == "last":
        order = np.arange(n)
    else:
        order = np.random.default_rng(seed).permutation(n)
    val = np.sort(order[n - n_val:]) if mode == "last" else np.sort(order[:n_val])
    train = np.setdiff1d(np.arange(n), val)
    return train, val


def split_depth(depth, fraction, min_depth):
    """Split one stack of ``depth`` slices into training ``[0, z)`` and validation ``[z, depth)``; return z.

    The last ``fraction`` of the slices validate: a contiguous block at the end,
    because neighbouring slices are nearly identical and scattered validation
    slices would be seen in training. With ``fraction > 0`` both parts hold at
    least ``min_depth`` slices (a whole training crop); ``fraction == 0`` returns ``depth``.
    """
    if fraction <= 0:
        return depth
    n_val = max(int(round(depth * fraction)), min_depth)
    if depth - n_val < min_depth:
        raise ValueError(
            f"fraction={fraction}: the training volume has {depth} slices; validating on the last "
            f"{n_val} leaves fewer than {min_depth} (the crop depth) for training; lower the fraction "
            "or the crop depth, or validate on nothing (fraction 0)"
        )
    return depth - n_val
