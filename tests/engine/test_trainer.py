"""The trainer contract (engine/trainer.py): what a method must declare, and which checkpoint
tensors the engine rebuilds from the run's class names instead of loading them."""
import pytest
import torch

from engine.clip_loading import load_clip_to_cpu
from engine.config import build_cfg
from engine.errors import ConfigError
from engine.registry import TRAINERS
from engine.trainer import CheckpointMismatch, TrainerBase
from trainers.coop import CoOp

CLASSNAMES = ["face", "leopard", "motorbike"]


class NoNode(TrainerBase):
    """A method that forgot to say which TRAINER.<NODE> holds its keys."""

    def build_model(self, clip_model, classnames):
        raise AssertionError("never reached")


class UnknownNode(NoNode):
    config_node = "NOPE"


def test_there_is_no_default_config_node():
    assert not hasattr(TrainerBase, "config_node")


def test_a_trainer_without_config_node_is_refused_at_registration():
    with pytest.raises(TypeError, match=r"NoNode does not set config_node: add the class attribute "
                                        r"config_node = \"<NODE>\", the TRAINER.<NODE> its config hook adds"):
        TRAINERS.register("NoNode")(NoNode)
    assert "NoNode" not in TRAINERS


def test_a_trainer_without_config_node_is_refused_at_construction():
    with pytest.raises(TypeError, match="NoNode does not set config_node"):
        NoNode(build_cfg())


def test_a_config_node_the_config_lacks_names_the_fix():
    with pytest.raises(ConfigError, match=r"UnknownNode.config_node is 'NOPE', but the config has no TRAINER.NOPE: "
                                          r"register the trainer with the config hook that adds it"):
        UnknownNode(build_cfg())


def test_every_registered_trainer_names_a_node_with_its_precision():
    cfg = build_cfg()
    for name in TRAINERS.names():
        assert "PREC" in cfg.TRAINER[TRAINERS.get(name).config_node], name


# ----------------------------------------------------------------------------------
# Class-dependent buffers
# ----------------------------------------------------------------------------------

class CoOpWithClassPrior(CoOp):
    """CoOp plus one more buffer built from the class names, declared class-dependent."""

    class_dependent_buffers = CoOp.class_dependent_buffers + ("class_prior",)

    def build_model(self, clip_model, classnames):
        model = super().build_model(clip_model, classnames)
        model.prompt_learner.register_buffer("class_prior", torch.full((len(classnames),), 1 / len(classnames)))
        return model


class CoOpWithUndeclaredClassPrior(CoOpWithClassPrior):
    class_dependent_buffers = CoOp.class_dependent_buffers


@pytest.fixture(scope="module")
def clip_model(tiny_clip_path):
    return load_clip_to_cpu(tiny_clip_path).float()


def checkpoint_trainer(trainer_cls, clip_model, classnames):
    """A trainer with its model and trainable flags as the engine builds them; only the checkpoint methods
    run, so `__init__` (data loaders) is skipped."""
    trainer = object.__new__(trainer_cls)
    trainer.cfg = build_cfg()
    trainer.cfg.TRAINER.COOP.N_CTX = 4
    trainer.model = trainer.build_model(clip_model, classnames)
    for name, param in trainer.model.named_parameters():
        param.requires_grad_(trainer.is_trainable(name))
    return trainer


def test_class_dependent_buffers_are_rebuilt_not_loaded(clip_model):
    base = checkpoint_trainer(CoOp, clip_model, CLASSNAMES[:2])
    with torch.no_grad():
        base.model.prompt_learner.ctx.normal_()
    new = checkpoint_trainer(CoOp, clip_model, CLASSNAMES)  # other classes: other token buffers
    built = {k: v.clone() for k, v in new.model.prompt_learner.named_buffers()}
    assert set(built) == {"token_prefix", "token_suffix"}

    new.load_checkpoint_state_dict(base.checkpoint_state_dict())
    assert torch.equal(new.model.prompt_learner.ctx, base.model.prompt_learner.ctx)
    for key, value in new.model.prompt_learner.named_buffers():
        assert torch.equal(value, built[key]), key


def test_a_method_extends_the_class_dependent_buffers(clip_model):
    checkpoint = checkpoint_trainer(CoOpWithClassPrior, clip_model, CLASSNAMES[:2]).checkpoint_state_dict()
    assert checkpoint["class_prior"].shape == (2,)
    new = checkpoint_trainer(CoOpWithClassPrior, clip_model, CLASSNAMES)
    new.load_checkpoint_state_dict(checkpoint)
    assert torch.equal(new.model.prompt_learner.class_prior, torch.full((3,), 1 / 3))

    undeclared = checkpoint_trainer(CoOpWithUndeclaredClassPrior, clip_model, CLASSNAMES)
    with pytest.raises(CheckpointMismatch, match="class_prior"):  # loaded, so the other classes' copy does not fit
        undeclared.load_checkpoint_state_dict(checkpoint)
