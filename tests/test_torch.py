"""test_torch.py: dropblock.torch.DropBlock2d's masks under torch.utils.checkpoint and its seeds.

  - recomputation: under torch.utils.checkpoint (use_reentrant=True and False) the forward runs
    again in backward; it must draw the same mask, so the gradients are bit-equal to a run
    without checkpointing, step after step, and the stream advances once per step, not twice;
  - seeds: a layer built without a seed takes one from torch's generator (two layers of the same
    shape drop different masks at the same step; torch.manual_seed before building sets it and
    reproduces it; the drawn seed comes back from a state dict); a layer with an explicit seed
    keeps the documented masks, (seed, stream + k * stream_step) at its k-th call, whatever
    torch's generator does.
The references are client.dropblock2d on the same (seed, stream) and runs without checkpoint.
Runs on the in-process engine's CPU backend ($DROPBLOCK_LIBRARY: meson sets it).
Exit 77 (skipped) when torch or NumPy cannot be imported.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python"))

from testlib import Tally  # noqa: E402

try:
    import numpy as np
    import torch
    import torch.utils.checkpoint as tcp
except ImportError as e:
    print("SKIP: %s" % e)
    sys.exit(77)

import dropblock  # noqa: E402
from dropblock.torch import DropBlock2d  # noqa: E402

T = Tally()
check = T.check
SHAPE = (2, 3, 9, 9)


def bits(t):
    return t.detach().contiguous().view(torch.int32).numpy().copy()


def make(client, **kw):
    return DropBlock2d(0.3, 3, client=client, **kw)


def steps(model, xs, ws, wrap):
    """Gradients of sum(model(x) * w) for each step's x, the forward through wrap."""
    grads = []
    for x, w in zip(xs, ws):
        x = x.clone().requires_grad_(True)
        y = wrap(model, x)
        (y * w).sum().backward()
        grads.append(bits(x.grad))
    return grads


def plain(m, x):
    return m(x)


def reentrant(m, x):
    return tcp.checkpoint(m, x, use_reentrant=True)


def non_reentrant(m, x):
    return tcp.checkpoint(m, x, use_reentrant=False)


def inner(m, x):
    """A segment with work of its own around the layer, as a checkpointed block has."""
    return torch.relu(m(x * 2.0)) + x


def checkpoint_cases(client):
    gen = torch.Generator().manual_seed(5)
    xs = [torch.rand(SHAPE, generator=gen) + 0.5 for _ in range(3)]
    ws = [torch.rand(SHAPE, generator=gen) for _ in range(3)]
    for seeded in (True, False):
        kw = {"seed": 1234} if seeded else {}
        torch.manual_seed(99)
        want = steps(make(client, **kw), xs, ws, plain)
        for name, wrap in (("use_reentrant=True", reentrant), ("use_reentrant=False", non_reentrant)):
            torch.manual_seed(99)
            m = make(client, **kw)
            got = steps(m, xs, ws, wrap)
            what = "checkpoint %s, %s seed" % (name, "explicit" if seeded else "drawn")
            for k in range(len(xs)):
                check(np.array_equal(got[k], want[k]),
                      "%s: step %d's gradient bit-equal to the run without checkpoint" % (what, k))
            check(m.stream == len(xs), "%s: the stream advanced once a step (%d after %d steps)"
                  % (what, m.stream, len(xs)))
        # the layer inside a larger checkpointed segment
        torch.manual_seed(99)
        want = steps(make(client, **kw), xs, ws, inner)
        for use in (True, False):
            torch.manual_seed(99)
            got = steps(make(client, **kw), xs, ws,
                        lambda m, x: tcp.checkpoint(inner, m, x, use_reentrant=use))
            check(all(np.array_equal(g, w) for g, w in zip(got, want)),
                  "checkpointed segment around the layer, use_reentrant=%s, %s seed: gradients bit-equal"
                  % (use, "explicit" if seeded else "drawn"))


def seed_cases(client):
    x = torch.rand(SHAPE) + 0.5
    torch.manual_seed(1)
    a, b = make(client), make(client)
    ya, yb = bits(a(x)), bits(b(x))
    check(a.seed != b.seed, "two layers without a seed draw different seeds (%d, %d)" % (a.seed, b.seed))
    check(not np.array_equal(ya, yb), "two layers of the same shape drop different masks at the same step")
    torch.manual_seed(2)
    c = make(client)
    check(c.seed != a.seed and not np.array_equal(bits(c(x)), ya),
          "torch.manual_seed changes a seedless layer's seed and masks")
    torch.manual_seed(1)
    a2 = make(client)
    check(a2.seed == a.seed and np.array_equal(bits(a2(x)), ya),
          "torch.manual_seed reproduces a seedless layer's seed and masks")
    # an explicit seed: the documented masks, whatever torch's generator holds
    for s in (0, 3):
        torch.manual_seed(s)
        m = make(client, seed=1234, stream=10, stream_step=2)
        got = [bits(m(x)) for _ in range(3)]
        xn = x.numpy()
        want = [client.dropblock2d(xn, 0.3, 3, seed=1234, stream=10 + 2 * k).view(np.int32) for k in range(3)]
        check(m.seed == 1234 and all(np.array_equal(g, w) for g, w in zip(got, want)),
              "explicit seed 1234 (torch seed %d): call k uses stream 10 + 2k, as client.dropblock2d" % s)
    # the drawn seed is state: it comes back from a state dict, an explicit one stays
    torch.manual_seed(7)
    src = make(client)
    src(x)
    st = src.state_dict()
    torch.manual_seed(8)
    dst = make(client)
    dst.load_state_dict(st)
    check(dst.seed == src.seed and dst.stream == src.stream and np.array_equal(bits(dst(x)), bits(src(x))),
          "a drawn seed and the stream come back from a state dict")
    fixed = make(client, seed=5)
    fixed.load_state_dict(st)
    check(fixed.seed == 5, "an explicit seed is not replaced by a state dict's drawn one")
    fixed.load_state_dict({"_extra_state": {"stream": 41}})
    check(fixed.stream == 41 and fixed.seed == 5, "a state dict with the stream alone (older ones) loads")
    check("seed=" in repr(make(client)), "repr shows the seed in use")


def main():
    with dropblock.Client(local=True, backends="cpu") as client:
        checkpoint_cases(client)
        seed_cases(client)
    print("%d passed, %d failed" % (T.passed, T.failed), flush=True)
    return 1 if T.failed else 0


if __name__ == "__main__":
    sys.exit(main())
