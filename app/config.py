"""Settings: every command-line flag, its environment variable and its default, in one place.

Each field of `Settings` is one flag. Its environment variable is `QWEN_DEMO_<FIELD>` (for
hosts such as Hugging Face Spaces that cannot pass flags). Precedence: flag, then environment
variable, then the default written here.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

DEFAULT_CKPT_PATH = "Qwen/Qwen2-VL-7B-Instruct"
# How --backend openai sends a video: its frames as images (any server), or one video (vLLM).
VIDEO_FORMATS = ("frames", "video/jpeg")
ENV_PREFIX = "QWEN_DEMO_"


def _flag(*names: str, help: str, **argparse_kwargs) -> dict:
    return {"names": names, "help": help, **argparse_kwargs}


@dataclass(frozen=True)
class Settings:
    """What the demo was started with; built once by `parse_args`, never mutated."""

    checkpoint_path: str = field(
        default=DEFAULT_CKPT_PATH,
        metadata=_flag("-c", "--checkpoint-path", help="hub id or local folder of the model"),
    )
    cpu_only: bool = field(default=False, metadata=_flag("--cpu-only", help="run on the CPU"))
    flash_attn2: bool = field(
        default=False,
        metadata=_flag("--flash-attn2", help="use FlashAttention-2 (falls back to SDPA if absent)"),
    )
    share: bool = field(
        default=False, metadata=_flag("--share", help="create a public gradio.live link")
    )
    inbrowser: bool = field(
        default=False, metadata=_flag("--inbrowser", help="open the demo in a browser tab")
    )
    server_port: int = field(default=7860, metadata=_flag("--server-port", help="port"))
    server_name: str = field(
        default="127.0.0.1",
        metadata=_flag("--server-name", help="address to bind (0.0.0.0 when hosted on Spaces)"),
    )
    max_new_tokens: int = field(
        default=1024,
        metadata=_flag("--max-new-tokens", help="default answer length limit, in tokens"),
    )
    min_pixels: int = field(
        default=4 * 28 * 28,
        metadata=_flag("--min-pixels", help="smallest image area fed to the model (pixels)"),
    )
    max_pixels: int = field(
        default=1280 * 28 * 28,
        metadata=_flag("--max-pixels", help="largest image area fed to the model (pixels)"),
    )
    video_fps: float = field(
        default=2.0, metadata=_flag("--video-fps", help="frames sampled per second of video")
    )
    max_frames: int = field(
        default=64, metadata=_flag("--max-frames", help="most frames sampled from one video")
    )
    max_upload_mb: float = field(
        default=200.0, metadata=_flag("--max-upload-mb", help="largest accepted upload (MB)")
    )
    max_files_per_turn: int = field(
        default=8, metadata=_flag("--max-files-per-turn", help="most files in one message")
    )
    max_video_seconds: float = field(
        default=20 * 60.0,
        metadata=_flag("--max-video-seconds", help="longest accepted video (seconds)"),
    )
    max_context: int = field(
        default=32768,
        metadata=_flag(
            "--max-context",
            help="prompt token budget; older turns are left out beyond it",
        ),
    )
    max_media: int = field(
        default=32,
        metadata=_flag(
            "--max-media",
            help="most images and videos one answer looks at, history included (older turns "
            "are left out beyond it)",
        ),
    )
    backend: str = field(
        default="local",
        metadata=_flag(
            "--backend",
            choices=("local", "openai"),
            help="local: transformers in this process; openai: a chat-completions "
            "server (vLLM, SGLang, transformers serve)",
        ),
    )
    api_base: str = field(
        default="http://127.0.0.1:8000/v1",
        metadata=_flag("--api-base", help="base URL of the OpenAI-compatible server"),
    )
    api_key: str = field(
        default="",
        metadata=_flag(
            "--api-key", help="API key of that server (prefer the environment variable)"
        ),
    )
    model: str = field(
        default="",
        metadata=_flag("--model", help="model name on that server (default: its first model)"),
    )
    api_timeout: float = field(
        default=600.0,
        metadata=_flag("--api-timeout", help="longest wait for the server's next byte (seconds)"),
    )
    api_video_format: str = field(
        default="frames",
        metadata=_flag(
            "--api-video-format",
            choices=VIDEO_FORMATS,
            help="send videos as image frames (any server) or one video_url of JPEG frames (vLLM)",
        ),
    )
    max_batch_size: int = field(
        default=4,
        metadata=_flag(
            "--max-batch-size", help="most requests the local engine generates together"
        ),
    )
    prefix_cache_mb: float = field(
        default=-1,
        metadata=_flag(
            "--prefix-cache-mb",
            help="memory for the conversations' kept KV caches (MB; 0: off; -1: 1024 on the CPU, "
            "15%% of the GPU's memory)",
        ),
    )
    max_chats_per_client: int = field(
        default=16,
        metadata=_flag(
            "--max-chats-per-client",
            help="most answers one client (login or address) may have running or waiting",
        ),
    )
    max_queue_size: int = field(
        default=128,
        metadata=_flag("--max-queue-size", help="most requests waiting in the queue, all clients"),
    )
    mcp: bool = field(
        default=False,
        metadata=_flag(
            "--mcp",
            help="also serve the tools ask and find_objects to agents over MCP at "
            "/gradio_api/mcp/ (not with --auth: Gradio's MCP routes skip the login)",
        ),
    )
    ssl_certfile: str = field(
        default="",
        metadata=_flag(
            "--ssl-certfile",
            help="serve HTTPS with this certificate (browsers open the camera only on HTTPS or "
            "localhost: for a demo day on a local network)",
        ),
    )
    ssl_keyfile: str = field(
        default="", metadata=_flag("--ssl-keyfile", help="the private key of --ssl-certfile")
    )
    auth: str = field(
        default="",
        metadata=_flag("--auth", help="user:password, or a file with one user:password per line"),
    )
    log_content: bool = field(
        default=False,
        metadata=_flag("--log-content", help="also log what users wrote (off: metadata only)"),
    )

    @property
    def model_name(self) -> str:
        """The model's name as the page, /health and the status line show it: a hub id, or a
        local folder's base name (never a server path); for a remote server, --model."""
        if self.backend == "openai":
            return self.model or "the server's model"
        return display_model_name(self.checkpoint_path)

    @property
    def model_title(self) -> str:
        """The page's title: the model's own name, without its owner (`Qwen2-VL-7B-Instruct`)."""
        if self.backend == "openai" and not self.model:
            return "Qwen-VL"
        return self.model_name.rsplit("/", 1)[-1]


def display_model_name(checkpoint: str) -> str:
    """`Qwen/Qwen2-VL-7B-Instruct` as it is; `/srv/models/qwen-7b/` as `qwen-7b`."""
    text = checkpoint.rstrip("/\\")
    looks_like_hub_id = (
        text.count("/") == 1 and not text.startswith((".", "~")) and "\\" not in text
    )
    if looks_like_hub_id and not os.path.exists(text):
        return text
    return os.path.basename(text) or "model"


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _env_default(f: dataclasses.Field, environ: Mapping[str, str]):
    """The field's default, overridden by its environment variable when set."""
    raw = environ.get(env_name(f.name))
    if raw is None:
        return f.default
    converters: dict[str, Callable[[str], Any]] = {"bool": _parse_bool, "int": int, "float": float}
    convert = converters.get(str(f.type), str)
    try:
        return convert(raw)
    except ValueError as exc:
        raise SystemExit(f"error: {env_name(f.name)}={raw!r}: {exc}") from None


def build_parser(environ: Mapping[str, str] = os.environ) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Qwen2-VL web demo. Every flag can also be set by its environment variable.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for f in dataclasses.fields(Settings):
        meta = f.metadata
        default = _env_default(f, environ)
        kwargs: dict[str, Any] = {"dest": f.name, "default": default}
        helptext = f"{meta['help']} [env {env_name(f.name)}]"
        if f.type == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = {"int": int, "float": float}.get(str(f.type), str)
        parser.add_argument(*meta["names"], help=helptext, **kwargs)
    return parser


def parse_args(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] = os.environ
) -> Settings:
    """Flags, then environment variables, then defaults."""
    namespace = build_parser(environ).parse_args(argv)
    return Settings(**vars(namespace))
