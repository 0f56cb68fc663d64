"""ganserve's serving side.

Nothing here may import torch or ``training``: the serving image carries no torch. The pure contract modules
(``service.latents``, ``service.imaging``) are shared with ``training`` so both sides draw and lay out images alike.
"""
