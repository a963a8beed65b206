"""Flags, environment variables and defaults; the README's table lists every one of them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from app.config import DEFAULT_CKPT_PATH, Settings, env_name, parse_args

README = Path(__file__).resolve().parent.parent / "README.md"


def test_official_flags_and_defaults():
    settings = parse_args([], environ={})
    assert settings == Settings()
    assert (settings.checkpoint_path, settings.server_port, settings.server_name) == (
        DEFAULT_CKPT_PATH,
        7860,
        "127.0.0.1",
    )
    given = parse_args(
        [
            "-c",
            "ckpt",
            "--cpu-only",
            "--flash-attn2",
            "--share",
            "--inbrowser",
            "--server-port",
            "8080",
            "--server-name",
            "0.0.0.0",
        ],
        environ={},
    )
    assert (given.checkpoint_path, given.cpu_only, given.flash_attn2, given.share) == (
        "ckpt",
        True,
        True,
        True,
    )
    assert (given.inbrowser, given.server_port, given.server_name) == (True, 8080, "0.0.0.0")


def test_flag_beats_environment_beats_default():
    environ = {
        "QWEN_DEMO_SERVER_PORT": "9000",
        "QWEN_DEMO_CPU_ONLY": "yes",
        "QWEN_DEMO_VIDEO_FPS": "1.5",
    }
    from_env = parse_args([], environ=environ)
    assert (from_env.server_port, from_env.cpu_only, from_env.video_fps) == (9000, True, 1.5)
    flagged = parse_args(["--server-port", "9100", "--no-cpu-only"], environ=environ)
    assert (flagged.server_port, flagged.cpu_only) == (9100, False)


def test_a_bad_environment_value_is_a_short_message():
    with pytest.raises(SystemExit, match="QWEN_DEMO_SERVER_PORT"):
        parse_args([], environ={"QWEN_DEMO_SERVER_PORT": "eighty"})


def test_help_lists_flags_with_their_variables(run_python):
    result = run_python("web_demo_mm.py", "--help")
    assert "--checkpoint-path" in result.stdout and "QWEN_DEMO_CHECKPOINT_PATH" in result.stdout


def test_readme_table_lists_every_flag_and_variable():
    readme = README.read_text()
    for field in dataclasses.fields(Settings):
        assert field.metadata["names"][-1] in readme, field.name
        assert f"`{env_name(field.name)}`" in readme, field.name


def requirement_lines(path: Path) -> list[str]:
    """The requirement lines of a requirements file (comments, blanks and -r includes left out)."""
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("-r")]


def test_the_requirements_files_say_what_pyproject_says():
    import tomllib

    root = Path(__file__).resolve().parent.parent
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    assert requirement_lines(root / "requirements_web_demo.txt") == project["dependencies"]
    dev = requirement_lines(root / "requirements_dev.txt")
    assert dev == project["optional-dependencies"]["dev"]
    assert (root / "requirements.txt").read_text().split() == ["-r", "requirements_web_demo.txt"]
