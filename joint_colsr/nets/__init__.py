"""Plain ``nn.Module`` networks. Nothing here imports Lightning or Hydra."""

from joint_colsr.nets.blocks import ConvBNAct, make_output_activation, scaled_width
from joint_colsr.nets.joint_paper import (
    DECODER_TABLE,
    ENCODER_TABLE,
    JointPaperNet,
    count_parameters,
    decoder_upsample_sizes,
    encoded_size,
)

__all__ = [
    "DECODER_TABLE",
    "ENCODER_TABLE",
    "ConvBNAct",
    "JointPaperNet",
    "count_parameters",
    "decoder_upsample_sizes",
    "encoded_size",
    "make_output_activation",
    "scaled_width",
]
