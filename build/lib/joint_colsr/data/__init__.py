"""Data: sources of photographs, decoding, datasets, samplers and the LightningDataModule."""

from joint_colsr.data.cache import CachedImages, CacheError, ImageCache, build_cache
from joint_colsr.data.datamodule import ColSRDataModule
from joint_colsr.data.datasets import VALIDATION_VIEWS, ReferenceImages
from joint_colsr.data.decode import IMAGE_EXTENSIONS, ImageDecodeError, decode_image, is_effectively_grayscale
from joint_colsr.data.sampler import EpochSeededSampler, sample_seed
from joint_colsr.data.sources import SAMPLE_PHOTOS, ImageFolder, ImageItem, ImageSource, SamplePhotos

__all__ = [
    "IMAGE_EXTENSIONS",
    "SAMPLE_PHOTOS",
    "VALIDATION_VIEWS",
    "CacheError",
    "CachedImages",
    "ColSRDataModule",
    "EpochSeededSampler",
    "ImageDecodeError",
    "ImageCache",
    "ImageFolder",
    "ImageItem",
    "ImageSource",
    "ReferenceImages",
    "SamplePhotos",
    "build_cache",
    "decode_image",
    "is_effectively_grayscale",
    "sample_seed",
]
