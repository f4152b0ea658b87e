"""Plain ``nn.Module`` networks. Nothing here imports Lightning or Hydra."""

from joint_colsr.nets.blocks import (
    ConvBNAct,
    PixelShuffleUpsampler,
    ResidualBlock,
    make_output_activation,
    pixel_shuffle_factors,
    scaled_width,
)
from joint_colsr.nets.cascade import CascadeNet, load_stage_weights
from joint_colsr.nets.discriminator import VGGDiscriminator
from joint_colsr.nets.exemplar import ExemplarJointNet
from joint_colsr.nets.iizuka import IizukaColorizer
from joint_colsr.nets.joint_paper import (
    DECODER_TABLE,
    ENCODER_TABLE,
    JointPaperNet,
    count_parameters,
    decoder_upsample_sizes,
    encoded_size,
)
from joint_colsr.nets.residual_joint import ResidualJointNet
from joint_colsr.nets.srresnet import SRResNet, SROnlyNet
from joint_colsr.nets.vgg import VGG19Features

__all__ = [
    "DECODER_TABLE",
    "ENCODER_TABLE",
    "CascadeNet",
    "ExemplarJointNet",
    "ConvBNAct",
    "IizukaColorizer",
    "JointPaperNet",
    "PixelShuffleUpsampler",
    "ResidualBlock",
    "ResidualJointNet",
    "SROnlyNet",
    "SRResNet",
    "VGG19Features",
    "VGGDiscriminator",
    "count_parameters",
    "decoder_upsample_sizes",
    "encoded_size",
    "load_stage_weights",
    "make_output_activation",
    "pixel_shuffle_factors",
    "scaled_width",
]
