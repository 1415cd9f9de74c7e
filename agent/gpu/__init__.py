"""The GPU layer: NVML readings (nvml.py), pure decisions (policy.py), the loop's part (monitor.py)."""
