"""A cache of decoded reference images: :mod:`.build` writes it, :mod:`.store` reads it."""

from joint_colsr.data.cache.build import build_cache
from joint_colsr.data.cache.store import CacheError, CacheSplit, ImageCache, summarize

__all__ = ["CacheError", "CacheSplit", "ImageCache", "build_cache", "summarize"]
