"""What this installation can run: versions, compiled backends, Triton, the devices seen and the
models shipped with it."""

from __future__ import annotations

import importlib.metadata
import platform

import torch

import brainkernels
from brainkernels import _extension, backends


def _triton_version() -> str | None:
    try:
        return importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        return None


def _devices() -> list[dict]:
    devices = [{"device": "cpu", "name": platform.processor() or platform.machine(),
                "threads": torch.get_num_threads()}]
    for index in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        properties = torch.cuda.get_device_properties(index)
        devices.append({
            "device": f"cuda:{index}",
            "name": properties.name,
            "capability": f"{properties.major}.{properties.minor}",
            "memory_bytes": properties.total_memory,
        })
    for entry in devices:
        try:
            entry["default_backend"] = backends.resolve(torch.device(entry["device"]))
        except RuntimeError as error:  # a forced backend that cannot run there
            entry["default_backend"] = f"error: {error}"
    return devices


def _shipped_models() -> list[dict]:
    from brainkernels.inr.train import INRConfig
    from brainkernels.patchddm.train import PatchDDMConfig
    from brainkernels.ppr.train import PPRConfig
    from brainkernels.runtime import shipped

    found = []
    for config_class in (PPRConfig, PatchDDMConfig, INRConfig):
        for folder in shipped.shipped_models(config_class).values():
            card = shipped.read_card(folder)
            found.append({"model": shipped.PREFIX + folder.name, "method": card["method"], "summary": card["summary"],
                          "metrics": {name: metric["value"] for name, metric in card["metrics"].items()}})
    return found


def collect() -> dict:
    """Everything `brainkernels info` reports, as plain data."""
    extension = {"available": _extension.available(), "error": _extension.load_error()}
    if extension["available"]:
        module = _extension.load()
        extension.update(openmp_threads=module.openmp_max_threads(), cuda_built=bool(module.cuda_built),
                         cuda_architectures=module.cuda_architectures or None, cpu_isa=backends.cpu_isa())
    forced = backends.forced_backend()
    return {
        "brainkernels": brainkernels.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "extension": extension,
        "triton": {"version": _triton_version(), "interpreter": backends.triton_interpreted()},
        "forced_backend": None if forced is None else f"{forced[0]} ({forced[1]})",
        "devices": _devices(),
        "shipped_models": _shipped_models(),
    }


def format_report(info: dict) -> str:
    extension = info["extension"]
    if extension["available"]:
        cpu = f"yes (OpenMP, {extension['openmp_threads']} threads)"
        cuda = f"compiled for CUDA (architectures {extension['cuda_architectures']})" if extension["cuda_built"] \
            else "not built"
        if extension["cuda_built"] and not any(device["device"].startswith("cuda") for device in info["devices"]):
            cuda += "; no GPU visible"
    else:
        cpu = cuda = f"unavailable: {extension['error']}"
    triton = info["triton"]
    triton_text = "not installed" if triton["version"] is None else triton["version"] + (
        " (interpreter: TRITON_INTERPRET=1)" if triton["interpreter"] else "")
    lines = [
        f"brainkernels {info['brainkernels']}  python {info['python']}  torch {info['torch']}"
        f" (CUDA {info['torch_cuda'] or 'none'})",
        "backends:",
        f"  cpu extension   {cpu}",
        f"  cpu vectors     {extension.get('cpu_isa', 'n/a')}"
        f" (set {backends.CPU_ISA_ENV_VAR}={'|'.join(backends.CPU_ISAS)} to force one)",
        f"  cuda extension  {cuda}",
        f"  triton          {triton_text}",
        "  reference       yes (plain PyTorch)",
        f"forced backend:   {info['forced_backend'] or f'none (set {backends.ENV_VAR} to force one)'}",
        "devices:",
    ]
    for device in info["devices"]:
        details = ", ".join(f"{key} {value}" for key, value in device.items()
                            if key not in ("device", "default_backend"))
        lines.append(f"  {device['device']:<8}{details}; ops run on: {device['default_backend']}")
    lines.append("shipped models (trained on synthetic data; not for clinical use or real scans):"
                 if info["shipped_models"] else "shipped models:  none in this version")
    for model in info["shipped_models"]:
        metrics = ", ".join(f"{name} {value:.3g}" for name, value in model["metrics"].items())
        lines.append(f"  {model['model']}  {model['summary']} ({metrics}); use as --model {model['model']}")
    return "\n".join(lines)
