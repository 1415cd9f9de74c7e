"""The lab host: a local systemd container standing in for the inference box, with test doubles only at
the hardware boundary. podman.py runs podman and builds the image; host.py brings a lab host up and
down; hardware.py puts the hardware kit in it; engines.py what its engines run on; endpoint.py asks
its router. The names other modules use are these:"""

from aiinfra.installer.lab.endpoint import endpoint
from aiinfra.installer.lab.engines import (
    HOST_VLLM_READY,
    LAB_VLLM_ARGS,
    LAB_VLLM_ENV,
    host_vllm,
    host_vllm_dir,
    vllm_version,
)
from aiinfra.installer.lab.hardware import EXAMPLE_SPEC, install_hardware_kit, kit
from aiinfra.installer.lab.host import address, down, up
from aiinfra.installer.lab.podman import RELEASES, build_image, image_exists, image_name

__all__ = ["EXAMPLE_SPEC", "HOST_VLLM_READY", "LAB_VLLM_ARGS", "LAB_VLLM_ENV", "RELEASES", "address", "build_image",
           "down", "endpoint", "host_vllm", "host_vllm_dir", "image_exists", "image_name", "install_hardware_kit",
           "kit", "up", "vllm_version"]  # fmt: skip
