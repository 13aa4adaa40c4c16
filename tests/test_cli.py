"""The command-line set-up: the warning a GPU or TPU machine gets when JAX runs on its CPU."""

import jax

from amr_jax import cli


def _machine(monkeypatch, devices=(), commands=()):
  monkeypatch.setattr(cli.glob, "glob", lambda pattern: [d for d in devices if d.startswith(pattern.split("[")[0])])
  monkeypatch.setattr(cli.shutil, "which", lambda name: f"/usr/bin/{name}" if name in commands else None)


def test_a_gpu_machine_running_jax_on_its_cpu_is_told_the_install_command(monkeypatch):
  _machine(monkeypatch, devices=["/dev/nvidia0"])
  warning = cli.cpu_fallback_warning("cpu")
  assert "has an NVIDIA GPU, but JAX runs on the CPU" in warning
  assert f'pip install -r requirements.txt "jax[cuda12]=={jax.__version__}"' in warning
  _machine(monkeypatch, commands=["nvidia-smi"])
  assert "NVIDIA GPU" in cli.cpu_fallback_warning("cpu")
  assert cli.cpu_fallback_warning("gpu") is None


def test_a_tpu_machine_running_jax_on_its_cpu_is_told_the_install_command(monkeypatch):
  _machine(monkeypatch, devices=["/dev/accel0"])
  assert f'"jax[tpu]=={jax.__version__}"' in cli.cpu_fallback_warning("cpu")
  assert cli.cpu_fallback_warning("tpu") is None


def test_a_cpu_only_machine_gets_no_warning(monkeypatch):
  _machine(monkeypatch)
  assert cli.cpu_fallback_warning("cpu") is None
