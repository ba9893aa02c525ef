"""An objective slow enough to kill a worker in the middle of a trial."""

import time

import numpy as np


def score(prompts):
    time.sleep(1.0)
    return [-float(np.sum(np.asarray(p.vector) ** 2)) for p in prompts]
