"""The tokenizer of a released Hugging Face folder (LLaDA-8B-Base / -Instruct), and its chat
template.

`HFTokenizer(directory)` reads `tokenizer.json` with the `tokenizers` package and its special
tokens from `tokenizer_config.json` and `special_tokens_map.json`; `apply_chat_template`
renders the folder's Jinja chat template as Hugging Face transformers does. Both packages
come with the `[llada]` extra and are imported only when a folder is opened or a template
rendered. The model itself lives in `remdm_jax.models`; this module holds no weights.
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import re
import secrets
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from remdm_jax import files
from remdm_jax.text.token_checks import _check_ids
from remdm_jax.validation import ArgumentTypeError, check_string, coerce

# The token LLaDA writes for a masked position; its tokenizer_config.json lists it among the
# added tokens but sets no `mask_token`.
MASK_TOKEN = "<|mdm_mask|>"
# The end of a chat turn in LLaDA-8B-Instruct's Llama-3-style template.
EOT_TOKEN = "<|eot_id|>"
# The named special tokens transformers passes to a chat template (its
# SPECIAL_TOKENS_ATTRIBUTES), each only when the folder sets it.
TEMPLATE_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token",
                   "cls_token", "mask_token")
_EXTRA = 'pip install -e ".[llada]"'


def _read_json(path: pathlib.Path) -> dict:
  """The JSON object in `path` (errors name the file, as `files.read_json_object` words
  them), or {} when there is no such file."""
  return files.read_json_object(path, "tokenizer JSON file") if path.is_file() else {}


def _token_text(value, where: str) -> str | None:
  """A special token as it is stored: a string, or an AddedToken object with `content`."""
  if value is None or isinstance(value, str):
    return value
  if isinstance(value, dict) and isinstance(value.get("content"), str):
    return value["content"]
  raise ValueError(f"{where} must be a token string or an object with 'content', got "
                   f"{value!r:.60}")


def _special_tokens(directory: pathlib.Path) -> dict[str, str]:
  """The named special tokens of the folder: `tokenizer_config.json` first, then
  `special_tokens_map.json` for the ones it does not set."""
  found = {}
  for name in ("tokenizer_config.json", "special_tokens_map.json"):
    entries = _read_json(directory / name)
    for key in TEMPLATE_TOKENS:
      text = _token_text(entries.get(key), f"{key} in {directory / name}")
      if text is not None:
        found.setdefault(key, text)
  return found


def _chat_template(directory: pathlib.Path) -> tuple[str | None, pathlib.Path]:
  """`(source, file)`: `chat_template.jinja` when present, else the `chat_template` of
  tokenizer_config.json (a string, or a list of named templates of which the one named
  "default" is used); source None when there is none."""
  jinja_file = directory / "chat_template.jinja"
  if jinja_file.is_file():
    return files.read_text(jinja_file, "chat template"), jinja_file
  where = directory / "tokenizer_config.json"
  template = _read_json(where).get("chat_template")
  if isinstance(template, list):
    named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
    template = named.get("default")
  if template is not None and not isinstance(template, str):
    raise ValueError(f"chat_template in {where} must be a string or a list holding a "
                     f"template named 'default', got {template!r:.60}")
  return template, where


def _import_tokenizers():
  try:
    import tokenizers
  except ImportError as error:
    raise ImportError(f"Hugging Face tokenizer folders need the tokenizers package: {_EXTRA}"
                      ) from error
  return tokenizers


class HFTokenizer:
  """The tokenizer of a Hugging Face folder holding `tokenizer.json` (LLaDA-8B's release).

  Special ids come from the folder's files, never from constants: `bos_id` and `eos_id` from
  the `bos_token` and `eos_token` of `tokenizer_config.json` (or `special_tokens_map.json`),
  `mask_id` from a `mask_token` there or else the added token `<|mdm_mask|>` (126336 in
  LLaDA), and `eot_id` from the added token `<|eot_id|>` (None when there is none; 126348 in
  LLaDA-8B-Instruct). `encode` adds no special ids and reads user text as text: a special
  token's string written in it (`"<|mdm_mask|>"`) is encoded as ordinary characters unless
  `allow_special=True`; `encode_chat` renders a conversation with the chat template and keeps
  the template's own special tokens while the messages stay text. `decode` drops every
  special id (the added tokens marked special, and BOS, EOS, mask and end-of-turn) and ids
  past the tokenizer's own vocabulary.

  `vocab_size` is the model's: the larger of the tokenizer's size (added tokens included) and
  the `embedding_size` / `vocab_size` of a `config.json` beside it, since LLaDA pads its
  embedding to 126464 rows for 126349 tokens; the padding ids decode to nothing.

  Args:
    directory: a folder holding `tokenizer.json` and `tokenizer_config.json` (or
      `special_tokens_map.json`).

  Raises:
    ImportError: the `tokenizers` package is missing (the `[llada]` extra).
    ValueError: the folder, `tokenizer.json` or a needed special token is missing, a JSON
      file does not parse, or `config.json` gives a `mask_token_id` other than the
      tokenizer's (each message names the file).
  """

  def __init__(self, directory: str | os.PathLike):
    if not isinstance(directory, (str, os.PathLike)):
      raise ArgumentTypeError(f"directory must be a path (str or os.PathLike), got "
                              f"{directory!r:.60}")
    self.directory = pathlib.Path(directory)
    if not (self.directory / "tokenizer.json").is_file():
      raise ValueError(f"{self.directory} holds no tokenizer.json (a Hugging Face tokenizer "
                       "folder needs it)")
    backend = _import_tokenizers().Tokenizer
    try:
      self._tokenizer = backend.from_file(str(self.directory / "tokenizer.json"))
    except Exception as error:    # the Rust side raises a bare Exception for a bad file
      raise ValueError(f"{self.directory / 'tokenizer.json'} is not a tokenizers file: "
                       f"{error}") from None
    self._named = _special_tokens(self.directory)
    self._config = _read_json(self.directory / "config.json")
    self.bos_id = self._named_id("bos_token")
    self.eos_id = self._named_id("eos_token")
    self.mask_id = self._mask_id()
    self.eot_id = self._tokenizer.token_to_id(EOT_TOKEN)
    self._size = self._tokenizer.get_vocab_size(with_added_tokens=True)
    self.vocab_size = self._model_vocab_size()
    added = self._tokenizer.get_added_tokens_decoder()
    special = {i for i, token in added.items() if token.special}
    texts = sorted((added[i].content for i in special), key=len, reverse=True)
    self._special_text = re.compile("|".join(map(re.escape, texts))) if texts else None
    special |= {self.bos_id, self.eos_id, self.mask_id}
    if self.eot_id is not None:
      special.add(self.eot_id)
    self._special = np.array(sorted(special), np.int64)
    self._template = None

  def _named_id(self, key: str) -> int:
    """The id of the named special token `key` (`bos_token`, `eos_token`)."""
    text = self._named.get(key)
    if text is None:
      raise ValueError(f"no {key} in {self.directory / 'tokenizer_config.json'} or "
                       f"{self.directory / 'special_tokens_map.json'}")
    return self._token_id(text, key)

  def _token_id(self, text: str, key: str) -> int:
    token_id = self._tokenizer.token_to_id(text)
    if token_id is None:
      raise ValueError(f"{key} {text!r} of {self.directory} is not a token of "
                       f"{self.directory / 'tokenizer.json'}")
    return token_id

  def _mask_id(self) -> int:
    """A `mask_token` entry, else the added token `<|mdm_mask|>`; checked against the
    `mask_token_id` of config.json when it gives one."""
    if "mask_token" in self._named:
      mask_id = self._token_id(self._named["mask_token"], "mask_token")
    else:
      mask_id = self._tokenizer.token_to_id(MASK_TOKEN)
      if mask_id is None:
        raise ValueError(f"{self.directory / 'tokenizer.json'} has no {MASK_TOKEN} token and "
                         "neither tokenizer_config.json nor special_tokens_map.json sets a "
                         "mask_token")
    config_mask = self._config.get("mask_token_id")
    if config_mask is not None and config_mask != mask_id:
      raise ValueError(f"mask_token_id in {self.directory / 'config.json'} is {config_mask!r}, "
                       f"but the tokenizer's mask token has id {mask_id}")
    return mask_id

  def _model_vocab_size(self) -> int:
    """The tokenizer's size, or the model's embedding rows in config.json when more."""
    sizes = [self._size]
    for key in ("embedding_size", "vocab_size"):
      value = self._config.get(key)
      if value is None:
        continue
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{key} in {self.directory / 'config.json'} must be an integer >= 1, "
                         f"got {value!r}")
      sizes.append(value)
    return max(sizes)

  def encode(self, text: str, *, allow_special: bool = False) -> list[int]:
    """The ids of a string, no special ids added.

    Args:
      text: the string.
      allow_special: whether a special token's string in the text (`"<|eot_id|>"`, as a
        rendered chat template holds them) becomes its id. False (the default): user text is
        text, and `"<|mdm_mask|>"` is encoded as the characters it is made of, never as the
        mask id. For a conversation use `encode_chat`.
    """
    text = check_string("text", text)
    self._tokenizer.encode_special_tokens = not coerce("allow_special", allow_special, bool)
    return self._tokenizer.encode(text, add_special_tokens=False).ids

  def encode_chat(self, messages: Sequence[Mapping[str, Any]], *,
                  add_generation_prompt: bool = True) -> list[int]:
    """The ids of a conversation rendered with the chat template (`apply_chat_template`):
    the special tokens the template writes become their ids, while special-token strings
    inside the messages' contents stay text.

    Each special-token string in a content is replaced by a placeholder before rendering;
    the rendered text is cut at the template's special tokens, as the tokenizer itself cuts
    at added tokens, and each piece between them, placeholders turned back into the user's
    characters, is encoded as text.

    Raises:
      ValueError, ImportError: as `apply_chat_template`.
    """
    marker = f"\ue000{secrets.randbelow(10**12)}:"          # private use: not in real text
    found: list[str] = []

    def protect(match):
      found.append(match.group())
      return f"{marker}{len(found) - 1}\ue001"

    protected = [dict(m, content=self._special_text.sub(protect, m["content"]))
                 for m in _check_messages(messages)] if self._special_text else messages
    rendered = self.apply_chat_template(protected, add_generation_prompt=add_generation_prompt)
    restore = re.compile(re.escape(marker) + r"(\d+)\ue001")
    ids, at = [], 0
    for match in (self._special_text.finditer(rendered) if self._special_text else ()):
      ids += self.encode(restore.sub(lambda m: found[int(m[1])], rendered[at:match.start()]))
      ids.append(self._tokenizer.token_to_id(match.group()))
      at = match.end()
    return ids + self.encode(restore.sub(lambda m: found[int(m[1])], rendered[at:]))

  def decode(self, ids: Iterable[int]) -> str:
    """The text of integer ids in `[0, vocab_size)`, special ids and padding ids dropped."""
    ids = _check_ids(ids, self.vocab_size)
    keep = (ids < self._size) & ~np.isin(ids, self._special)
    return self._tokenizer.decode(ids[keep].tolist(), skip_special_tokens=True)

  @property
  def chat_template(self) -> str | None:
    """The folder's chat template source, or None (a Base model has none)."""
    return _chat_template(self.directory)[0]

  def apply_chat_template(self, messages: Sequence[Mapping[str, Any]], *,
                          add_generation_prompt: bool = True) -> str:
    """The conversation rendered with the folder's chat template, as text to `encode`.

    Renders as transformers' `tokenizer.apply_chat_template(messages, tokenize=False,
    add_generation_prompt=...)` does (see `render_chat_template`), with the folder's named
    special tokens (`bos_token`, `eos_token`, ...) as template variables. The default
    `add_generation_prompt=True` is what LLaDA's `generate.py` and `chat.py` pass.

    Args:
      messages: a non-empty list of dicts such as `{"role": "user", "content": "Hi"}`.
      add_generation_prompt: whether to open an assistant turn after the last message (a
        template that always opens one, like LLaDA-8B-Instruct's, ignores it).

    Raises:
      ValueError: the folder has no chat template (a Base model), the messages are not a
        list of dicts, or the template refuses them (`raise_exception`).
      ImportError: jinja2 is missing (the `[llada]` extra).
    """
    if self._template is None:
      source, where = _chat_template(self.directory)
      if source is None:
        raise ValueError(f"{self.directory} has no chat template (no chat_template in "
                         "tokenizer_config.json and no chat_template.jinja): a Base model "
                         "takes plain text")
      self._template = (compile_chat_template(source, origin=str(where)), str(where))
    template, where = self._template
    return render_chat_template(template, messages, self._named,
                                add_generation_prompt=add_generation_prompt, origin=where)


def _jinja():
  try:
    import jinja2
    import jinja2.ext
    import jinja2.sandbox
  except ImportError as error:
    raise ImportError(f"chat templates need jinja2: {_EXTRA}") from error
  return jinja2


def _generation_extension(jinja2):
  """The `{% generation %}...{% endgeneration %}` block of transformers' templates, which
  marks an assistant's reply; here it renders its body unchanged."""

  class Generation(jinja2.ext.Extension):
    tags = {"generation"}

    def parse(self, parser):
      lineno = next(parser.stream).lineno
      body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
      return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body
                                    ).set_lineno(lineno)

    def _render(self, caller):
      return caller()

  return Generation


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
  # Jinja's own tojson escapes HTML characters; templates expect plain JSON.
  return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                    sort_keys=sort_keys)


def _one_line(error: Exception) -> str:
  """An exception as one line: its type when it has no message, whitespace runs as one space."""
  return " ".join(str(error).split()) or type(error).__name__


def compile_chat_template(source: str, *, origin: str = "chat template"):
  """A Jinja chat template compiled as transformers compiles it.

  An immutable sandboxed environment with `trim_blocks=True` and `lstrip_blocks=True`, the
  `loopcontrols` extension and the `{% generation %}` block, the `tojson` filter as
  `json.dumps` (not HTML-escaped, `ensure_ascii=False`), and the globals `raise_exception`
  (raises a `TemplateError`) and `strftime_now(format)` (the local time now).

  Args:
    source: the template's Jinja text.
    origin: where it comes from (its file), the start of every error message.

  Raises:
    ValueError: the source is not a string or not valid Jinja (any error compiling it).
  """
  if not isinstance(source, str):
    raise ArgumentTypeError(f"chat template must be a string, got {source!r:.60}")
  jinja2 = _jinja()

  def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)

  env = jinja2.sandbox.ImmutableSandboxedEnvironment(
      trim_blocks=True, lstrip_blocks=True,
      extensions=[_generation_extension(jinja2), jinja2.ext.loopcontrols])
  env.filters["tojson"] = _tojson
  env.globals["raise_exception"] = raise_exception
  env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
  try:
    return env.from_string(source)
  except jinja2.exceptions.TemplateSyntaxError as error:
    raise ValueError(f"{origin}: the chat template is not valid Jinja: {_one_line(error)} "
                     f"(line {error.lineno})") from None
  except Exception as error:     # the template is foreign code: any failure is its fault
    raise ValueError(f"{origin}: the chat template does not compile: "
                     f"{type(error).__name__}: {_one_line(error)}") from None


def _check_messages(messages) -> list[dict]:
  """The messages as fresh dicts, keys holding None dropped (as transformers does); each
  must have a string `role` and `content` (a template reads both, and a missing one would
  render as nothing)."""
  if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence):
    raise ArgumentTypeError(f"messages must be a list of dicts such as {{'role': 'user', "
                            f"'content': 'Hi'}}, got {type(messages).__name__} "
                            f"{messages!r:.40}")
  if not messages:
    raise ValueError("messages must hold at least one message, got an empty list")
  for i, message in enumerate(messages):
    if not isinstance(message, Mapping):
      raise ArgumentTypeError(f"messages must be dicts, got {type(message).__name__} "
                              f"{message!r:.40} at index {i}")
    for field in ("role", "content"):
      if not isinstance(message.get(field), str):
        found = "absent" if field not in message else repr(message[field])[:40]
        raise ValueError(f"messages[{i}]['{field}'] must be a string, got {found}")
  return [{k: v for k, v in message.items() if v is not None} for message in messages]


def render_chat_template(template, messages: Sequence[Mapping[str, Any]],
                         special_tokens: Mapping[str, str], *,
                         add_generation_prompt: bool = True,
                         origin: str = "chat template") -> str:
  """A compiled chat template rendered for one conversation.

  The template sees `messages`, `add_generation_prompt`, `tools` and `documents` (both None)
  and each named special token in `special_tokens` (`bos_token`, ...), as in transformers.
  `origin` (the template's file) starts every error message.

  Raises:
    ValueError: `messages` is not a non-empty list of dicts with a string `role` and
      `content`, `add_generation_prompt` not a bool, the template calls `raise_exception`
      (its message is kept), or it fails in any other way (a range past the sandbox's
      limit, an `{% include %}` with nothing to include, an undefined call, ...).
  """
  messages = _check_messages(messages)
  if not isinstance(add_generation_prompt, bool):
    raise ArgumentTypeError(f"add_generation_prompt must be a bool, got "
                            f"{add_generation_prompt!r}")
  jinja2 = _jinja()
  try:
    return template.render(**special_tokens, messages=messages, tools=None, documents=None,
                           add_generation_prompt=add_generation_prompt)
  except Exception as error:     # the template is foreign code: any failure is its fault
    refused = type(error) is jinja2.exceptions.TemplateError           # raise_exception
    what = "refused the messages" if refused else f"failed: {type(error).__name__}"
    raise ValueError(f"{origin}: the chat template {what}: {_one_line(error)}") from None
