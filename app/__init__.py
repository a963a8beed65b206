"""Qwen2-VL web demo: settings, media, message conversion, engines and the Gradio UI."""
