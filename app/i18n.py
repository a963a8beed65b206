"""The page's labels in English and Chinese.

`gr.I18n(**TRANSLATIONS)` is passed to `launch()` (Gradio 6 takes it there, not in `Blocks`);
the browser's language picks the table ("zh-CN", "zh-TW", "zh" all read the Chinese one),
English otherwise. Only static labels are translated: answers, errors and statistics come from
the server in English, and so do the examples' labels (Gradio does not translate those). A
translated string must be a whole component value or label: Gradio translates one key per
string. Both tables have the same keys (a test checks).
"""

from __future__ import annotations

EN: dict[str, str] = {
    "header": (
        "Chat about images, videos and PDF documents. Ask it to find things and it draws boxes "
        "around them."
    ),
    "license": (
        "Check the license of the model served (Qwen2-VL 2B and 7B, Qwen2.5-VL 3B and 7B, "
        "Qwen3-VL and Qwen3.5 are Apache-2.0; the largest ones have the Qwen license). This demo's "
        "code is Apache-2.0. Answers may be wrong: check what matters."
    ),
    "status_loading": "⏳ Loading the model…",
    "status_ready": "✅ Ready",
    "status_failed": "❌ The model could not be loaded",
    "placeholder": "Ask about an image, a video or a PDF…",
    "placeholder_loading": "The model is loading; you can type as soon as it is ready…",
    "chatbot": "Chat",
    "settings": "⚙️ Settings",
    "system_prompt": "System prompt",
    "system_prompt_placeholder": "You are a helpful assistant.",
    "add_vision_id": 'Label images and videos ("Picture 1:", "Video 1:")',
    "enable_thinking": "Think before answering (slower, often better)",
    "max_new_tokens": "Max new tokens",
    "temperature": "Temperature (0 = greedy)",
    "top_p": "Top-p",
    "top_k": "Top-k (0 = off)",
    "repetition_penalty": "Repetition penalty",
    "seed": "Seed (-1 = random)",
    "min_pixels": "Image min pixels",
    "max_pixels": "Image max pixels",
    "video_fps": "Video frames per second",
    "max_frames": "Video max frames",
    "pdf_pages": "PDF pages",
    "pdf_pages_placeholder": "All pages; or e.g. 1-3, 7, 10-",
    "camera": "📷 Camera: take a photo or record a clip for your message",
    "camera_photo": "Photo",
    "camera_clip": "Clip",
    "export": "⬇️ Export conversation",
    "import": "⬆️ Import conversation",
    "conversation_file": "Conversation file (.zip)",
}

ZH: dict[str, str] = {
    "header": "就图片、视频和 PDF 文档进行对话。让它寻找物体，它会在图上画出方框。",
    "license": (
        "请查看所用模型的许可（Qwen2-VL 2B/7B、Qwen2.5-VL 3B/7B、Qwen3-VL 与 Qwen3.5 "
        "采用 Apache-2.0，最大的型号采用 Qwen 许可）。本演示代码采用 Apache-2.0 许可。"
        "回答可能有误，重要信息请核实。"
    ),
    "status_loading": "⏳ 模型加载中…",
    "status_ready": "✅ 就绪",
    "status_failed": "❌ 模型加载失败",
    "placeholder": "就图片、视频或 PDF 提问…",
    "placeholder_loading": "模型加载中，就绪后即可输入…",
    "chatbot": "对话",
    "settings": "⚙️ 设置",
    "system_prompt": "系统提示词",
    "system_prompt_placeholder": "You are a helpful assistant.",
    "add_vision_id": "给图片和视频加上编号（“Picture 1:”、“Video 1:”）",
    "enable_thinking": "先思考再回答（更慢，通常更好）",
    "max_new_tokens": "最多生成的 token 数",
    "temperature": "温度（0 = 贪心解码）",
    "top_p": "Top-p",
    "top_k": "Top-k（0 = 关闭）",
    "repetition_penalty": "重复惩罚",
    "seed": "随机种子（-1 = 随机）",
    "min_pixels": "图片最少像素数",
    "max_pixels": "图片最多像素数",
    "video_fps": "视频每秒采样帧数",
    "max_frames": "视频最多帧数",
    "pdf_pages": "PDF 页码",
    "pdf_pages_placeholder": "全部页面；或如 1-3, 7, 10-",
    "camera": "📷 相机：拍照或录制短片，附加到消息中",
    "camera_photo": "照片",
    "camera_clip": "短片",
    "export": "⬇️ 导出对话",
    "import": "⬆️ 导入对话",
    "conversation_file": "对话文件（.zip）",
}

# Keys get this prefix in the page, so that none collides with Gradio's own ("chatbot", ...).
PREFIX = "qwen_demo_"


def key(name: str) -> str:
    """The page's translation key for a label name of EN / ZH."""
    return PREFIX + name


# Gradio's own labels that its Chinese tables lack (its keys, not prefixed).
GRADIO_ZH: dict[str, str] = {
    "chat_interface.new_chat": "新对话",
    "chat_interface.conversation": "对话",
    "chatbot.retry": "重新生成",
    "chatbot.undo": "撤销",
    "chatbot.edit": "编辑",
    "chatbot.clear": "清空",
    "chatbot.copy_message": "复制消息",
    "chatbot.copied_message": "已复制",
}

# Browsers send "zh-CN", "zh-TW", ...: Gradio's svelte-i18n falls back from them to "zh".
TRANSLATIONS: dict[str, dict[str, str]] = {
    "en": {key(name): text for name, text in EN.items()},
    "zh": {key(name): text for name, text in ZH.items()} | GRADIO_ZH,
}
