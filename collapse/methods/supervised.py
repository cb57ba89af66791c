from .base import Method
from .registry import register


@register("supervised")
class Supervised(Method):
    """Labeled loss only: the baseline every semi-supervised method is measured against."""
