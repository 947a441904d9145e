"""lorafleet operator: reconciles LoRAModel and AdapterCatalog resources into KubeRay
RayServices and adapter indexes."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lorafleet")
except PackageNotFoundError:  # running from a source tree without `pip install -e`
    __version__ = "0.0.0+unknown"
