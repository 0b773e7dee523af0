"""Dataset preparation: raw DOTA images to mmrotate's patch layout."""
from .dota_split import PRESETS, split_dota

__all__ = ['PRESETS', 'split_dota']
