"""The paper's protocol as data (METHOD.md 3-6): the frozen values every run is compared with.

Imports nothing of this project, so every script can read it. A script's UPPER_CASE constants
are its editable defaults; the values here are the reference: a run whose config differs from
them in any setting gets a name (and a report label) that says so (config.py).
"""
from types import MappingProxyType

ARCHS = ("mlp", "cnn")
METHODS = ("ce", "mse", "mse_margin", "jacob", "adv", "align", "nsr")
DECAY_METHODS = ("ce", "jacob", "adv")          # the CE recipe's decoupled decay (METHOD.md 3)

# training, METHOD.md 3-4 (Adamax, batch 128, 50 epochs of 5 x majority-class samples)
TRAINING = MappingProxyType({"batch_size": 128, "lr": 1e-3, "margin": 1.0, "seed": 0,
                             "max_train_samples": None, "bias": True})
EPOCHS = 50
DECAY = MappingProxyType({"decay_l1": 0.01, "decay_l2": 0.01})
JACOBIAN = MappingProxyType({"beta": 0.7, "jacob_norm": 1})      # CE + 0.7 * Jacobian L1
ADVERSARIAL = MappingProxyType({"adv_eps": 0.1, "adv_steps": 10, "adv_step_size": 0.01})
ADV_EPS_LIST = (0.1, 0.2, 0.3)
NSR = MappingProxyType({"nsr_eps": 0.01, "nsr_max_noise": 1.0})   # NSR_i = n_i / (|s_i| + 0.01)
NSR_BETA = MappingProxyType({"cnn": 0.3, "mlp": 0.4})            # MSE + margin + beta * NSR
ALIGN_BETA = MappingProxyType({"cnn": 0.2, "mlp": 1.0})          # MSE + margin + w * alignment

# attacks, METHOD.md 5: the eps lists
PGD_EPS = (0.01, 0.03, 0.05, 0.1, 0.2, 0.3)
NOISE_EPS = (0.0, 0.01, 0.03, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3)
SPSA_EPS = (0.01, 0.03, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3)
AUTOATTACK_EPS = PGD_EPS

# the models of each preset: (method, settings that differ from the paper's values)
PAPER_MODELS = (("ce", {}), ("mse", {}), ("mse_margin", {}), ("jacob", {}),
                ("adv", {"adv_eps": 0.1}), ("adv", {"adv_eps": 0.2}), ("adv", {"adv_eps": 0.3}),
                ("align", {}), ("nsr", {}))
QUICK_MODELS = (("ce", {}), ("mse_margin", {}), ("jacob", {}), ("adv", {"adv_eps": 0.1}),
                ("nsr", {}))


def paper_config(arch, method):
    """The paper's settings of one (arch, method), a fresh dict (METHOD.md 3-4)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}: choose mlp or cnn")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
    cfg = {"arch": arch, "method": method, **TRAINING}
    if method in DECAY_METHODS:
        cfg.update(DECAY)
    if method == "jacob":
        cfg.update(JACOBIAN)
    elif method == "adv":
        cfg.update(ADVERSARIAL)
    elif method == "nsr":
        cfg.update(beta=NSR_BETA[arch], **NSR)
    elif method == "align":
        cfg.update(beta=ALIGN_BETA[arch], bias=False)       # method 1: no biases
    return cfg
