"""The AutoAttack ensemble (Croce & Hein 2020) from the maintained torchattacks library, each
attack run on its own: an independent check that the paper's PGD is not overstating robustness.

    python attack_autoattack.py --checkpoint results/checkpoints/cnn_nsr_0.3_s0_best.pt --max-samples 500
    python attack_autoattack.py --checkpoint CKPT --attacks apgd-ce apgd-t --eps 0.03 0.1
    python attack_autoattack.py --checkpoint CKPT --attacks square --n-queries 5000

Attacks (METHOD.md, attacks), all L-inf with inputs in [0, 1], at every eps of the paper's PGD:
  apgd-ce  APGD on the cross-entropy (torchattacks.APGD, loss "ce")
  apgd-t   targeted APGD on the DLR loss, every other class as a target (torchattacks.APGDT)
  fab-t    targeted FAB, every other class as a target (torchattacks.FAB, multi_targeted)
  square   Square, black-box random search, 5,000 queries (torchattacks.Square)
as in AutoAttack's "standard" version, one restart each, 100 iterations for APGD and FAB.
Clean-misclassified beats are not attacked (they count with their clean prediction), as for
every attack of this project. torchattacks works on images: a beat is fed as (N, 1, 1, 187);
Square draws square windows and needs a height above 1, so it sees a beat folded to
(N, 1, 11, 17) (187 = 11 x 17; only its search windows depend on the layout, not the budget).
Every x_adv is checked against the budget and [0, 1] (METHOD.md 7, check 6) before it is recorded.
Results: one JSON per (checkpoint, attack, eps) in the format of attack_pgd.py (attack_common).
"""

import numpy as np
import torch

from attack_common import (add_target_args, eps_arg, open_attack, parser, predict, run_sweep,
                           shard_arg)
import protocol
from models import N_CLASSES, N_SAMPLES
from utils import arg_number, progress_bar, run_cli

EPS_LIST = list(protocol.AUTOATTACK_EPS)
ATTACKS = ["apgd-ce", "apgd-t", "fab-t", "square"]
STEPS = 100              # APGD and FAB iterations (AutoAttack standard)
N_QUERIES = 5000         # Square's query budget (AutoAttack standard)
SEED = 0
BATCH_SIZE = 500         # beats per torchattacks call (speed only)
IMAGE_SHAPE = {"square": (1, 11, 17)}        # default (1, 1, 187)


class BeatAsImage(torch.nn.Module):
    """The model seen through image-shaped inputs: (N, C, H, W) -> (N, 187) -> logits."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x.reshape(len(x), N_SAMPLES))


def build_attack(name, model, eps, steps=STEPS, n_queries=N_QUERIES, seed=SEED):
    import torchattacks     # installed with --no-deps (setup_env.sh): it declares torchvision
    net = BeatAsImage(model).eval()
    if name == "apgd-ce":
        return torchattacks.APGD(net, norm="Linf", eps=eps, steps=steps, n_restarts=1, seed=seed,
                                 loss="ce")
    if name == "apgd-t":
        return torchattacks.APGDT(net, norm="Linf", eps=eps, steps=steps, n_restarts=1,
                                  seed=seed, n_classes=N_CLASSES)
    if name == "fab-t":
        return torchattacks.FAB(net, norm="Linf", eps=eps, steps=steps, n_restarts=1, seed=seed,
                                multi_targeted=True, n_classes=N_CLASSES)
    if name == "square":
        return torchattacks.Square(net, norm="Linf", eps=eps, n_queries=n_queries, n_restarts=1,
                                   seed=seed)
    raise ValueError(f"unknown attack {name!r}: choose from {', '.join(ATTACKS)}")


def autoattack(model, x, y, name, eps, steps=STEPS, n_queries=N_QUERIES, seed=SEED,
               batch_size=BATCH_SIZE, progress=False):
    """One AutoAttack component on the clean-correct beats of (x, y); x_adv (x elsewhere)."""
    model.eval()
    x_adv = x.clone()
    todo = torch.nonzero(predict(model, x) == y).flatten()
    if eps == 0 or len(todo) == 0:
        return x_adv
    attack = build_attack(name, model, eps, steps, n_queries, seed)
    shape = IMAGE_SHAPE.get(name, (1, 1, N_SAMPLES))
    for i in progress_bar(range(0, len(todo), batch_size), desc=f"{name} eps={eps:g}",
                          unit="batch", disable=not progress, leave=False):
        b = todo[i:i + batch_size]
        adv = attack(x[b].reshape(len(b), *shape), y[b]).reshape(len(b), N_SAMPLES).detach()
        x_adv[b] = adv.to(x.dtype)
    return x_adv


def batch_shard(model, x, y, batch_size, i, k):
    """Shard i of k: the beats of every k-th batch of the clean-correct beats, from the i-th.
    torchattacks reseeds at every call, so attacking these batches alone gives exactly what
    the unsplit run gives them (re-batching the shard yields the same batches)."""
    todo = torch.nonzero(predict(model, x) == y).flatten().cpu().numpy()
    wrong = np.setdiff1d(np.arange(len(y)), todo)
    batches = [todo[j:j + batch_size] for j in range(0, len(todo), batch_size)][i::k]
    mine = np.concatenate(batches) if batches else np.array([], dtype=int)
    return np.concatenate([mine, wrong[i::k]])       # misclassified beats: untouched anyway


def get_args_parser():
    p = parser(__doc__.split("\n")[0])
    add_target_args(p)
    num = arg_number
    p.add_argument("--attacks", nargs="+", choices=ATTACKS, default=ATTACKS,
                   help="which components to run (each on its own)")
    p.add_argument("--eps", type=eps_arg, nargs="+", default=EPS_LIST, help="L-inf budgets")
    p.add_argument("--steps", type=num(int, 1), default=STEPS, help="APGD and FAB iterations")
    p.add_argument("--n-queries", type=num(int, 1), default=N_QUERIES, help="Square's queries")
    p.add_argument("--batch-size", type=num(int, 1), default=BATCH_SIZE,
                   help="beats per torchattacks call (it reseeds per call: the batches, and so "
                        "this value, are part of the settings)")
    p.add_argument("--shard", type=shard_arg, default=None, metavar="I/K",
                   help="attack the I-th of K parts (whole batches) of the beats; the parts "
                        "merge into the unsplit result once all are done")
    return p


def main(argv=None):
    return run(get_args_parser().parse_args(argv))


def run(args):
    """The sweeps that `args` (get_args_parser's namespace) describes, one per component."""
    target, subset, rc = open_attack(args)
    if rc:
        return rc
    import torchattacks
    model, x, y = target["model"], target["x"], target["y"]
    for name in args.attacks:
        budget = {"n_queries": args.n_queries} if name == "square" else {"steps": args.steps}
        tag = f"{name}-" + (f"q{args.n_queries}" if name == "square" else f"s{args.steps}") + subset
        settings_for = lambda eps: {"eps": eps, **budget, "restarts": 1, "seed": args.seed,
                                    "library": f"torchattacks {torchattacks.__version__}",
                                    "batch": args.batch_size}
        def attack_at(eps, pos, name=name):
            x_adv = x.clone()
            p = torch.as_tensor(pos, dtype=torch.long)
            x_adv[p] = autoattack(model, x[p], y[p], name, eps, args.steps, args.n_queries,
                                  args.seed, args.batch_size, progress=True)
            return x_adv
        shard = args.shard and (*args.shard, lambda i, k: batch_shard(model, x, y,
                                                                      args.batch_size, i, k))
        if run_sweep(target, args.eps, name, tag, settings_for, attack_at, args.out_dir, args.force,
                     shard=shard):
            return 2
    return 0


if __name__ == "__main__":
    run_cli(main)
