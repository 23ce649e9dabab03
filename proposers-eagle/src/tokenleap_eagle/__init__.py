"""EAGLE / EAGLE-3 heads for tokenleap: a small decoder layer on the target's hidden states drafts k tokens."""

from tokenleap_eagle.config import HeadConfig
from tokenleap_eagle.head import EagleHead

__all__ = ["EagleHead", "HeadConfig"]
