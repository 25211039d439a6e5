"""Building a method's model directly (no trainer) from the default config with some method keys set."""
from engine.config import build_cfg


def method_cfg(node, keys, dataset=None):
    """The default config with `TRAINER.<node>.<key> = value` for each of `keys` (and DATASET.NAME)."""
    cfg = build_cfg()
    if dataset:
        cfg.DATASET.NAME = dataset
    for key, value in keys.items():
        cfg.TRAINER[node][key] = value
    return cfg


def set_trainable(model, trainer_class):
    """requires_grad as the engine sets it: only the trainer's trainable name prefixes."""
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith(trainer_class.trainable))
    return model
