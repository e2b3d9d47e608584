"""The peers the gateway benchmark runs beside Floopy in the same run: the bare forwarder
(``bench.bare_forwarder``) and, when its virtualenv exists, the LiteLLM proxy.

LiteLLM is not a dependency of Floopy: ``../shared/peer-bench/run_bench.sh`` builds it in
``~/.cache/peer-bench/venv`` (``litellm[proxy]==1.106.2``; run that recipe once). Here it is
started from that virtualenv with the equivalent configuration — one OpenAI-compatible model
routed to the same fake provider Floopy uses, its master key as the only auth, no database,
no retries, offline price map — on one granian worker, like Floopy's gateway.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from devstack.gateway_process import ChildProcess

__all__ = ["BareForwarderProcess", "LiteLLMProcess", "litellm_venv"]


def litellm_venv() -> Path | None:
    venv = Path(os.environ.get("PEER_BENCH_VENV", Path.home() / ".cache/peer-bench/venv"))
    return venv if (venv / "bin" / "litellm").exists() else None


class BareForwarderProcess(ChildProcess):
    name = "bare-forwarder"

    def __init__(self, directory: Path, upstream: str) -> None:
        super().__init__(directory)
        self.upstream = upstream

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "bench.bare_forwarder", "--port", str(self.port)]

    def env(self) -> dict[str, str]:
        return {**os.environ, "FLOOPY_BARE_UPSTREAM": self.upstream}


class LiteLLMProcess(ChildProcess):
    name = "litellm"
    health_path = "/health/liveliness"

    def __init__(
        self,
        directory: Path,
        venv: Path,
        *,
        upstream: str,
        model: str,
        master_key: str,
        settings: dict[str, object] | None = None,
    ) -> None:
        """``settings``: more ``litellm_settings`` (``{"cache": True, "cache_params": …}``)."""
        super().__init__(directory)
        self.venv = venv
        self.master_key = master_key
        self.config = directory / "litellm.yaml"
        # YAML is a superset of JSON: no YAML library needed to write the config
        self.config.write_text(
            json.dumps(
                {
                    "model_list": [
                        {
                            "model_name": model,
                            "litellm_params": {
                                "model": f"openai/{model}",
                                "api_base": upstream,
                                "api_key": "sk-upstream-fake",
                            },
                        }
                    ],
                    "litellm_settings": {
                        "callbacks": [],
                        "num_retries": 0,
                        "request_timeout": 30,
                        "telemetry": False,
                        **(settings or {}),
                    },
                    "general_settings": {"master_key": "os.environ/LITELLM_MASTER_KEY"},
                }
            )
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def argv(self) -> list[str]:
        return [
            str(self.venv / "bin" / "litellm"),
            "--config",
            str(self.config),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--num_workers",
            "1",
            "--run_granian",
        ]

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_MASTER_KEY": self.master_key,
        }
