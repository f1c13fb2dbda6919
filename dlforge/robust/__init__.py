"""Adversarial robustness, each part a function on any ``nn.Module`` with float inputs.

- ``space``: budgets in the input's own units (before normalisation) and the valid range;
- ``attacks``: FGSM, PGD (L∞/L2, random start, restarts), Carlini-Wagner L2, DeepFool;
- ``square``: the Square attack, black-box, for models without gradients (int8 in ONNX Runtime);
- ``evaluate``: robust accuracy, curves over ε, transfer attacks, gradient-masking checks;
- ``corruptions``: Gaussian noise, blur, contrast and shift at five severities (2-D and 1-D);
- ``training``: adversarial training steps (PGD, TRADES, fast FGSM) for the Trainer;
- ``suite``: the whole evaluation the ``robust:`` stage and ``dlforge attack`` report.
"""

from dlforge._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "space": ["InputSpace", "InRawUnits", "input_space", "NotAttackableError"],
        "attacks": ["fgsm", "pgd", "carlini_wagner", "deepfool", "MinimalResult"],
        "square": ["square_attack", "SquareResult"],
        "evaluate": ["robustness_curves", "transfer_accuracy", "sanity_checks", "AttackSettings"],
        "corruptions": ["corrupt", "corruption_curves", "CORRUPTIONS"],
        "training": ["AdversarialStep"],
        "suite": ["robustness_report", "variant_robustness", "onnx_robustness", "probe"],
        "config": ["RobustConfig", "AdversarialConfig"],
    },
)
