"""Networks: ``create_network(name, **kwargs)``; see :func:`list_networks` for the names."""

from maht_net.models.maht_net import MAHTNet
from maht_net.models.refine_net import RefineNet
from maht_net.models.registry import create_network, list_networks, register_network
from maht_net.models.unet import UNetHeatmap

__all__ = ["MAHTNet", "RefineNet", "UNetHeatmap", "create_network", "list_networks", "register_network"]
