"""Where the hardware kit is: installer/kit/ in the checkout, a folder of scripts, not a package, so the
wheel a box installs does not carry it. The kit: TEST DOUBLES standing in for what cannot be had here
(NVIDIA GPUs and driver packages, the Ollama binary, model weights), each labelled as such. `aiinfra
lab` and Molecule put them on lab hosts; the tests run the agent against them on this machine.
- fake_models.py: tiny real models (random weights) for vLLM, and Ollama's store layout;
- stub_engine.py: vLLM's and Ollama's HTTP surfaces, for faults a real engine cannot produce on cue;
- fake-nvml/pynvml.py: NVML, its state in a file that the fake nvidia-smi shares;
- fake_nvidia_driver.py: driver .debs named and versioned as a real source's, in a flat repository;
- SECURE_BOOT: the firmware's SecureBoot variable, shaped as efivarfs gives it (4 bytes of attributes,
  then 1 for on, 0 for off), which the driver role reads (nvidia_driver_secure_boot_efivar).
"""

from pathlib import Path

DIR = Path(__file__).resolve().parents[1] / "kit"
STUB_ENGINE = DIR / "stub_engine.py"
FAKE_MODELS = DIR / "fake_models.py"
FAKE_NVML = DIR / "fake-nvml"
FAKE_DRIVER = DIR / "fake_nvidia_driver.py"
SECURE_BOOT = "/var/lib/fake-nvidia/SecureBoot-efivar"  # on a lab host; off until a test turns it on
