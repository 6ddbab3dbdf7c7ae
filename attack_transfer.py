"""Transfer attack: adversarial beats crafted on a source model by APGD-T (the strongest white-box
attack of this project), evaluated on the target model, on the same beats (METHOD.md 5,
"Transfer").

    python attack_transfer.py --checkpoint results/paper/checkpoints/mlp_nsr_0.4_s0_best.pt \
        --source results/paper/checkpoints/mlp_ce_s0_best.pt --max-samples 1000
    python attack_transfer.py --checkpoint CKPT            # source: the CE model of its arch
                                                           # and seed, beside CKPT

The target's gradients are never used, so a target that masks its gradients cannot hide from
it (Papernot et al. 2017, "Practical black-box attacks against machine learning"; Athalye et
al. 2018, "Obfuscated gradients give a false sense of security", sec. 5: transfer is how masked
models are broken). Like every attack here it attacks only the beats the target classifies
correctly (the others keep their clean input and prediction). The crafted beats depend on the
source, the beats, eps and the APGD-T settings only: they are kept in a hidden cache beside the
results (`.transfer/`, keyed by the source's sha256), so every target of one source reuses them.
A result records the source's name and sha256 in its settings: a retrained source makes it stale.
"""
import os
import sys

import torch

import attack_autoattack
from attack_common import (ModelLoadError, add_target_args, eps_arg, load_checkpoint, open_attack,
                           parser, predict, run_sweep)
import protocol
import training
from utils import arg_number, atomic_write, run_cli, sha256_file

EPS_LIST = list(protocol.AUTOATTACK_EPS)    # the ensemble's eps, on its beats
SOURCE_METHOD = "ce"           # the default source: this method's model of the same arch and seed
SOURCE_ATTACK = "apgd-t"
STEPS = attack_autoattack.STEPS
SEED = 0
BATCH_SIZE = attack_autoattack.BATCH_SIZE


def default_source(ckpt, checkpoint):
    """The CE model of the target's arch and seed, in the target checkpoint's folder."""
    cfg = ckpt["config"]
    source = {"arch": ckpt["arch"], "method": SOURCE_METHOD, "seed": cfg.get("seed", 0),
              "max_train_samples": cfg.get("max_train_samples")}      # the budget, as reproduce.py
    return os.path.join(os.path.dirname(checkpoint) or ".", training.run_name(source) + "_best.pt")


def crafted(source, target, eps, steps, seed, batch_size, cache_dir):
    """APGD-T's x_adv on the source model for the target's beats (cached: the same source,
    data, beats, eps and settings give the same beats)."""
    key = {"source_sha256": source["sha256"], "data_sha256": target["data_sha256"],
           "indices": [int(i) for i in target["idx"]], "eps": eps, "steps": steps, "seed": seed,
           "batch": batch_size, "attack": SOURCE_ATTACK}
    path = os.path.join(cache_dir, f"{source['name']}__{SOURCE_ATTACK}-s{steps}-n"
                                   f"{len(target['idx'])}__eps{eps:g}.pt")
    if os.path.exists(path):
        try:
            kept = torch.load(path, weights_only=True)
            if kept["key"] == key:
                return kept["x_adv"].to(target["x"].device)
        except Exception:
            pass                       # unreadable or of another key: craft again
    x_adv = attack_autoattack.autoattack(source["model"], target["x"], target["y"],
                                         SOURCE_ATTACK, eps, steps, seed=seed,
                                         batch_size=batch_size, progress=True)
    os.makedirs(cache_dir, exist_ok=True)
    atomic_write(path, lambda tmp: torch.save({"key": key, "x_adv": x_adv.cpu()}, tmp))
    return x_adv


def transfer_attack(model, x, y, x_source_adv):
    """x_adv for the target: the source's adversarial beat where the target classifies the
    clean beat correctly, the clean beat elsewhere."""
    x_adv = x.clone()
    ok = predict(model, x) == y
    x_adv[ok] = x_source_adv[ok]
    return x_adv


def get_args_parser():
    p = parser(__doc__)
    add_target_args(p)
    p.add_argument("--source", default=None,
                   help="the checkpoint the beats are crafted on (default: the CE model of the "
                        "target's arch and seed, in the target's folder)")
    p.add_argument("--eps", type=eps_arg, nargs="+", default=EPS_LIST, help="L-inf budgets")
    p.add_argument("--steps", type=arg_number(int, 1), default=STEPS,
                   help="APGD-T iterations on the source")
    p.add_argument("--batch-size", type=arg_number(int, 1), default=BATCH_SIZE,
                   help="beats per torchattacks call on the source (it reseeds per call: part "
                        "of the settings)")
    return p


def main(argv=None):
    return run(get_args_parser().parse_args(argv))


def run(args):
    """The sweep that `args` (get_args_parser's namespace) describes."""
    target, subset, rc = open_attack(args)
    if rc:
        return rc
    src_path = args.source or (args.checkpoint and default_source(target["ckpt"], args.checkpoint))
    if not src_path:
        print("error: --source is required with --model/--torchscript", file=sys.stderr)
        return 2
    try:
        src_model, src_ckpt = load_checkpoint(src_path, target["device"])
    except (FileNotFoundError, OSError, ValueError, ModelLoadError) as e:
        print(f"error: --source {src_path}: {e}", file=sys.stderr)
        return 2
    if src_ckpt["arch"] != target["ckpt"].get("arch") and target["ckpt"].get("arch") != "user":
        print(f"note: source {src_path} is a {src_ckpt['arch']}, the target a "
              f"{target['ckpt']['arch']}")
    source = {"model": src_model.eval(), "sha256": sha256_file(src_path),
              "name": src_ckpt["config"].get("name") or os.path.basename(src_path)}
    model, x, y = target["model"], target["x"], target["y"]
    cache = os.path.join(args.out_dir, ".transfer")
    tag = f"transfer-{SOURCE_ATTACK}-s{args.steps}-from-{source['name']}{subset}"
    settings_for = lambda eps: {"eps": eps, "source": source["name"],
                                "source_sha256": source["sha256"],
                                "source_attack": SOURCE_ATTACK, "steps": args.steps,
                                "seed": args.seed, "batch": args.batch_size}
    attack_at = lambda eps, pos: transfer_attack(
        model, x, y, crafted(source, target, eps, args.steps, args.seed, args.batch_size, cache))
    return run_sweep(target, args.eps, "transfer", tag, settings_for, attack_at, args.out_dir,
                     args.force)


if __name__ == "__main__":
    run_cli(main)
