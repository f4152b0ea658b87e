"""Data: sources of photographs, decoding, datasets, samplers and the LightningDataModule.

One job per module: ``sources`` (which photos), ``decode`` (file -> sRGB uint8), ``views``
(boxes and validation views), ``datasets`` (reference images from files or the cache, and
the collate), ``sampler`` (epoch order and sample seeds), ``cache.build`` / ``cache.store``
(writing / reading the decoded-image cache), ``datamodule`` (the LightningDataModule).
"""

from joint_colsr.data.cache import CacheError, ImageCache, build_cache
from joint_colsr.data.datamodule import ColSRDataModule
from joint_colsr.data.datasets import CachedImages, ReferenceImages
from joint_colsr.data.decode import IMAGE_EXTENSIONS, ImageDecodeError, decode_image, is_effectively_grayscale
from joint_colsr.data.sampler import EpochSeededSampler, sample_seed
from joint_colsr.data.sources import SAMPLE_PHOTOS, ImageFolder, ImageItem, ImageSource, SamplePhotos
from joint_colsr.data.views import VALIDATION_VIEWS

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
