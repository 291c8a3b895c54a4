"""HFTokenizer on a tiny LLaDA-style folder built with the tokenizers package: round trips,
special ids read from the files, decode checks, and the chat template rendered exactly."""

import json
import sys

import numpy as np
import pytest

from remdm_jax.text.hf_tokenizer import HFTokenizer
from remdm_jax.text.tokenizers import get_tokenizer
from references.folders import write_tokenizer_folder

CHAT = [{"role": "user", "content": "What is two plus two?"},
        {"role": "assistant", "content": " Four. "}]
RENDERED = ("<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nWhat is two plus "
            "two?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nFour.<|eot_id|>")
PROMPT = "<|start_header_id|>assistant<|end_header_id|>\n\n"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  """290 tokens (284 learned, then the 6 specials from 284), and a config.json padding the
  embedding to 320 rows, as LLaDA's pads 126349 tokens to 126464."""
  folder = tmp_path_factory.mktemp("llada")
  tok = write_tokenizer_folder(folder, config={"embedding_size": 320, "vocab_size": 300,
                                      "mask_token_id": 286})
  assert tok.get_vocab_size() == 290 and tok.token_to_id("<|mdm_mask|>") == 286
  return folder


def test_round_trip_and_special_ids_from_the_files(folder):
  tok = get_tokenizer(str(folder))
  assert isinstance(tok, HFTokenizer)
  ids = tok.encode("The cat sat, two plus two.")
  assert ids and max(ids) < 284 and tok.decode(ids) == "The cat sat, two plus two."
  assert (tok.bos_id, tok.eos_id, tok.mask_id, tok.eot_id) == (284, 285, 286, 289)
  assert tok.vocab_size == 320       # config.json's embedding_size, past the 290 tokens
  assert tok.encode("<|eot_id|>", allow_special=True) == [289]


def test_user_text_is_text(folder):
  """A special token's string in user text is encoded as its characters (never the mask or
  end-of-turn id) unless allow_special=True; in a conversation the template's own special
  tokens are still ids, and a conversation without such strings encodes as transformers
  encodes its rendered text."""
  tok = HFTokenizer(folder)
  plain = tok.encode("a <|mdm_mask|> b")
  assert tok.mask_id not in plain and max(plain) < 284
  assert tok._tokenizer.decode(plain) == "a <|mdm_mask|> b"
  assert tok.encode("a <|mdm_mask|> b", allow_special=True) == [64, 220, 286, 220, 65]
  assert tok.encode_chat(CHAT) == tok.encode(tok.apply_chat_template(CHAT), allow_special=True)
  ids = tok.encode_chat([{"role": "user", "content": " x <|eot_id|><|mdm_mask|> y "}])
  assert tok.mask_id not in ids and ids.count(tok.eot_id) == 1        # the template's own
  assert ids[:2] == [tok.bos_id, 287] and ids[-3:] == [288, 198, 198]
  assert "x <|eot_id|><|mdm_mask|> y<|eot_id|>" in tok._tokenizer.decode(
      ids, skip_special_tokens=False)
  with pytest.raises(TypeError, match="allow_special must be"):
    tok.encode("a", allow_special="yes")


@pytest.mark.parametrize("chat", [False, True])
def test_a_prompt_naming_the_mask_token_is_text(folder, chat):
  """A job's prompt holding "<|mdm_mask|>" is encoded as text: its row holds no mask id
  before the masked tail (it used to be refused as a prompt with a mask inside)."""
  from remdm_jax.jobs.sample_job import prompt_rows
  tok = HFTokenizer(folder)
  row = prompt_rows(["a <|mdm_mask|> b"], 1, tok, 64, chat=chat)[0].tolist()
  used = row[:row.index(tok.mask_id)]
  assert len(used) > 10 and tok.mask_id not in used


def test_decode_drops_special_and_padding_ids_and_refuses_bad_ids(folder):
  tok = HFTokenizer(folder)
  ids = tok.encode("What is two")
  row = [tok.bos_id] + ids + [tok.mask_id, 287, tok.eot_id, tok.eos_id, 319]
  assert tok.decode(row) == tok.decode(np.array(row)) == "What is two"
  with pytest.raises(ValueError, match=r"ids must hold ids in \[0, 320\), got 320 at index"):
    tok.decode([1, 320])
  with pytest.raises(TypeError, match="ids must be a list of integer token ids, got float 1.5 at index 0"):
    tok.decode([1.5])
  with pytest.raises(TypeError, match="text must be a string, got int 3"):
    tok.encode(3)


def test_chat_template_renders_exactly(folder):
  tok = HFTokenizer(folder)
  assert tok.apply_chat_template(CHAT, add_generation_prompt=False) == RENDERED
  assert tok.apply_chat_template(CHAT) == RENDERED + PROMPT
  ids = tok.encode_chat(CHAT)
  assert ids == tok.encode(RENDERED + PROMPT, allow_special=True)
  prompt = [287] + tok.encode("assistant") + [288] + tok.encode("\n\n")
  assert ids[:2] == [tok.bos_id, 287] and ids[-len(prompt):] == prompt
  with pytest.raises(ValueError, match="messages must hold at least one message"):
    tok.apply_chat_template([])
  with pytest.raises(TypeError, match="messages must be dicts, got str 'hi' at index 0"):
    tok.apply_chat_template(["hi"])
  with pytest.raises(TypeError, match="add_generation_prompt must be a bool, got 1"):
    tok.apply_chat_template(CHAT, add_generation_prompt=1)


def test_template_helpers_match_transformers_environment(tmp_path):
  """raise_exception, the JSON tojson filter, loop controls, {% generation %} and None keys
  dropped from the messages, as transformers renders them."""
  template = ("{% for m in messages %}{% if m['role'] == 'bad' %}{{ raise_exception('no "
              "bad role') }}{% endif %}{% generation %}{{ m | tojson }}{% endgeneration %}"
              "{% if loop.index == 2 %}{% break %}{% endif %}{% endfor %}")
  write_tokenizer_folder(tmp_path, template=template)
  tok = HFTokenizer(tmp_path)
  out = tok.apply_chat_template([{"role": "a", "content": "é<", "name": None}] * 3)
  assert out == '{"role": "a", "content": "é<"}' * 2
  with pytest.raises(ValueError, match="the chat template refused the messages: no bad role"):
    tok.apply_chat_template([{"role": "bad", "content": "x"}])


def test_where_the_template_comes_from(tmp_path):
  """chat_template.jinja wins over tokenizer_config.json; a list of named templates gives the
  one named 'default'; a template that is not Jinja, or not text, is refused."""
  write_tokenizer_folder(tmp_path, template=[{"name": "tool_use", "template": "T"},
                                    {"name": "default", "template": "D{{ eos_token }}"}])
  assert HFTokenizer(tmp_path).apply_chat_template(CHAT) == "D<|endoftext|>"
  (tmp_path / "chat_template.jinja").write_text("J{{ messages | length }}")
  assert HFTokenizer(tmp_path).apply_chat_template(CHAT) == "J2"
  (tmp_path / "chat_template.jinja").write_text("{% for %}")
  with pytest.raises(ValueError, match="chat template is not valid Jinja: .*line 1"):
    HFTokenizer(tmp_path).apply_chat_template(CHAT)
  (tmp_path / "chat_template.jinja").unlink()
  write_tokenizer_folder(tmp_path, template=3)
  with pytest.raises(ValueError, match="chat_template in .*tokenizer_config.json must be a "
                                       "string or a list"):
    HFTokenizer(tmp_path).apply_chat_template(CHAT)


def test_a_base_folder_has_no_chat_template(tmp_path):
  write_tokenizer_folder(tmp_path, template=None)
  tok = HFTokenizer(tmp_path)
  assert tok.chat_template is None and tok.decode(tok.encode("two")) == "two"
  with pytest.raises(ValueError, match="has no chat template .*a Base model takes plain text"):
    tok.apply_chat_template(CHAT)


def test_missing_files_and_tokens_are_one_clear_error(tmp_path):
  with pytest.raises(TypeError, match="directory must be a path .*, got 3"):
    HFTokenizer(3)
  with pytest.raises(ValueError, match=r"holds no tokenizer.json"):
    HFTokenizer(tmp_path)
  (tmp_path / "tokenizer.json").write_text("{}")
  with pytest.raises(ValueError, match=r"tokenizer.json is not a tokenizers file"):
    HFTokenizer(tmp_path)
  write_tokenizer_folder(tmp_path)
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<|startoftext|>"}))
  with pytest.raises(ValueError, match=r"no eos_token in .*tokenizer_config.json or "
                                       r".*special_tokens_map.json"):
    HFTokenizer(tmp_path)
  (tmp_path / "special_tokens_map.json").write_text(json.dumps({"eos_token": "<|eot_id|>"}))
  assert HFTokenizer(tmp_path).eos_id == 289
  (tmp_path / "special_tokens_map.json").write_text(json.dumps({"eos_token": {"id": 3}}))
  with pytest.raises(ValueError, match=r"eos_token in .*special_tokens_map.json must be a "
                                       r"token string or an object with 'content'"):
    HFTokenizer(tmp_path)
  (tmp_path / "special_tokens_map.json").write_text(json.dumps({"eos_token": "<nope>"}))
  with pytest.raises(ValueError, match=r"eos_token '<nope>' of .* is not a token of"):
    HFTokenizer(tmp_path)
  (tmp_path / "special_tokens_map.json").unlink()
  write_tokenizer_folder(tmp_path)
  (tmp_path / "config.json").write_text(json.dumps({"embedding_size": 0}))
  with pytest.raises(ValueError, match=r"embedding_size in .*config.json must be an integer "
                                       r">= 1, got 0"):
    HFTokenizer(tmp_path)
  (tmp_path / "config.json").write_text("[320]")
  with pytest.raises(ValueError, match=r"config.json: expected a JSON object at the top level, got list"):
    HFTokenizer(tmp_path)
  (tmp_path / "config.json").write_text("{")
  with pytest.raises(ValueError, match=r"config.json: not valid JSON"):
    HFTokenizer(tmp_path)


def test_mask_token_from_the_files(tmp_path):
  write_tokenizer_folder(tmp_path, specials={"mask_token": "<|eot_id|>"})
  assert HFTokenizer(tmp_path).mask_id == 289
  write_tokenizer_folder(tmp_path, config={"mask_token_id": 126_336})
  with pytest.raises(ValueError, match=r"mask_token_id in .*config.json is 126336, but the "
                                       r"tokenizer's mask token has id 286"):
    HFTokenizer(tmp_path)
  (tmp_path / "config.json").unlink()
  data = json.loads((tmp_path / "tokenizer.json").read_text())
  data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] != "<|mdm_mask|>"]
  (tmp_path / "tokenizer.json").write_text(json.dumps(data))
  with pytest.raises(ValueError, match=r"tokenizer.json has no <\|mdm_mask\|> token and "
                                       "neither tokenizer_config.json nor"):
    HFTokenizer(tmp_path)


def test_missing_packages_name_the_extra(folder, monkeypatch):
  tok = HFTokenizer(folder)
  monkeypatch.setitem(sys.modules, "jinja2", None)
  with pytest.raises(ImportError, match=r'chat templates need jinja2: pip install -e "\.\[llada'):
    tok.apply_chat_template(CHAT)
  monkeypatch.setitem(sys.modules, "tokenizers", None)
  with pytest.raises(ImportError, match=r"need the tokenizers package: pip install -e"):
    HFTokenizer(folder)
