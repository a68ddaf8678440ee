"""Chat-formatted text: `messages` ([{role, content}]) rendered with the model's own chat template, as instruct models
are used (their activations on a chat prompt differ from those on plain prose)."""

from __future__ import annotations

import json
from pathlib import Path

from edgeq.errors import DataError, ModelError

ROLES = ("system", "user", "assistant", "tool")


def chat_template(model_dir: Path) -> str | None:
    """The model's chat template: chat_template.jinja, or `chat_template` in tokenizer_config.json."""
    folder = Path(model_dir)
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text(encoding="utf-8")
    template = _tokenizer_config(folder).get("chat_template")
    if isinstance(template, list):  # named templates: the default one
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    return template if isinstance(template, str) else None


def check_messages(messages, where: str) -> list[dict]:
    """A list of {role, content} with known roles, or one DataError naming `where`."""
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: 'messages' must be a non-empty list of {{role, content}}")
    for k, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise DataError(f"{where}: message {k} needs a 'role' and a text 'content'")
        if message.get("role") not in ROLES:
            raise DataError(
                f"{where}: message {k} has an unknown role {message.get('role')!r}", f"Roles: {', '.join(ROLES)}"
            )
    return messages


def render(model_dir: Path, messages: list[dict], add_generation_prompt: bool = False) -> str:
    """The conversation as the model sees it, through its own template (jinja2, sandboxed: a template is data)."""
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    template = chat_template(model_dir)
    if template is None:
        raise ModelError(
            f"the model in '{model_dir}' has no chat template",
            "Give plain text, or a model whose tokenizer_config.json or chat_template.jinja has one",
        )
    special = _special_tokens(Path(model_dir))
    try:
        environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        environment.globals["raise_exception"] = _raise
        return environment.from_string(template).render(
            messages=messages, add_generation_prompt=add_generation_prompt, **special
        )
    except TemplateError as exc:
        raise ModelError(f"the chat template of '{model_dir}' failed: {exc}") from None


def _tokenizer_config(folder: Path) -> dict:
    try:
        return json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _special_tokens(folder: Path) -> dict:
    config = _tokenizer_config(folder)
    found = {}
    for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
        value = config.get(key)
        found[key] = value.get("content") if isinstance(value, dict) else value
    return found


def _raise(message: str):
    from jinja2.exceptions import TemplateError

    raise TemplateError(message)
