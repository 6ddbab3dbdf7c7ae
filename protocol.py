"""The paper's protocol as data (METHOD.md 3-6): the frozen values every run is compared with.

Imports nothing of this project, so every script can read it. Also the presets of reproduce.py
(quick: the demo; paper: the paper's protocol) with their models and attack budgets. A script's UPPER_CASE constants
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


# Attack settings per preset. A value given as {"mlp": .., "cnn": ..} is per arch; "seeds": the
# training seeds it runs on ("all" or a list); eps lists default to each attack script's EPS_LIST.
PRESETS = {
    "quick": {"results": "results", "models": QUICK_MODELS, "epochs": 6,
              "max_train_samples": 4000,
              "pgd": {"steps": 50, "max_samples": 200},          # 40 beats per class
              "pgd_check": {"steps": 20, "sign_restarts": 2, "eps_one": True},
              "spsa": {"per_class": 3, "steps": 20, "n_dirs": 64, "eps": [0.03, 0.1],
                       "seeds": "all"},
              # FAB-T on fewer beats and eps: at 10 steps it costs ~2x APGD-T per beat
              "autoattack": {"attacks": ["apgd-ce", "apgd-t", "fab-t"], "steps": 10,
                             "max_samples": 200, "seeds": "all",
                             "per_attack": {"fab-t": {"max_samples": 25, "eps": [0.03, 0.1]}}},
              "square": {"n_queries": 300, "max_samples": 25, "eps": [0.03, 0.1],
                         "seeds": "all"},
              "noise": {"max_samples": 200},
              "sap": {"variants": ["han", "strong"], "steps": 40, "init_steps": 20,
                      "strong_steps": 40, "eps": [0.03, 0.1], "seeds": "all"},
              "transfer": {"source": "ce", "steps": 10, "eps": [0.03, 0.1], "seeds": "all"},
              "surface": {"methods": ["ce", "nsr"], "seeds": "all"}},
    "paper": {"results": "results/paper", "results_md": "RESULTS.md", "models": PAPER_MODELS,
              "epochs": 50,
              "max_train_samples": None,
              "pgd": {"steps": 100, "max_samples": None},
              "pgd_check": {"steps": 20, "sign_restarts": 5, "eps_one": True, "max_samples": 1000},
              "spsa": {"per_class": {"mlp": 162, "cnn": 40}, "steps": 100, "n_dirs": 2048,
                       "eps": {"mlp": list(SPSA_EPS), "cnn": [0.03, 0.1]}, "seeds": [0],
                       "shards": 4},
              # AutoAttack on every seed (the protocol asks seed 0): about 30 min per MLP seed
              # on 2 CPU cores, and the worst-case table becomes a mean over seeds
              "autoattack": {"attacks": ["apgd-ce", "apgd-t", "fab-t"], "steps": 100,
                             "max_samples": {"mlp": 1000, "cnn": 500}, "seeds": "all",
                             "shards": 2},
              "square": {"n_queries": 5000, "max_samples": {"mlp": 1000, "cnn": 500},
                         "eps": None, "seeds": "all", "shards": 2},
              "noise": {"max_samples": None},
              # issue 25: the smooth threat model (Han et al. 2020) and the transfer attack
              # from the CE model of the same arch and seed, on the AutoAttack beats at every
              # eps of the ensemble; the loss surface of CE and NSR
              "sap": {"variants": ["han", "strong"], "steps": 40, "init_steps": 20,
                      "strong_steps": 100, "eps": None, "seeds": "all"},
              "transfer": {"source": "ce", "steps": 100, "eps": None, "seeds": "all"},
              "surface": {"methods": ["ce", "nsr"], "seeds": "all"}},
}


def per_arch(value, arch):
    """A preset value given per arch ({"mlp": .., "cnn": ..}), or the same for both."""
    return value[arch] if isinstance(value, dict) else value


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
