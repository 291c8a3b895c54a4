"""HFTokenizer and its chat template renderer against Hugging Face transformers.

Builds small LLaDA-style tokenizer folders (a byte-level BPE trained on a few sentences with
LLaDA's special tokens appended, a `tokenizer_config.json` laid out like the release's), one
per chat template: LLaDA-8B-Instruct's released template, a Llama-3 style one spread over
indented lines (so that `trim_blocks` and `lstrip_blocks` decide the output), and one that
uses `namespace`, `tojson`, `raise_exception`, `strftime_now`, loop controls and
`{% generation %}`. For every conversation (user only, system + user, several turns, odd
whitespace and non-ASCII text) with and without the generation prompt, it compares:

- text: `HFTokenizer.apply_chat_template` with transformers'
  `AutoTokenizer.from_pretrained(folder).apply_chat_template(..., tokenize=False)`;
- ids: `HFTokenizer.encode` of the rendered text with `tokenizer(text,
  add_special_tokens=False)` (what LLaDA's generate.py does);
- decode: `HFTokenizer.decode` with `tokenizer.decode(ids, skip_special_tokens=True)`.

transformers runs in its own interpreter, since it is no dependency of this library:

  benchmarks/prepare_references.sh DIR   # DIR/venv has transformers, tokenizers, jinja2
  python benchmarks/llada_tokenizer_reference.py --reference-python DIR/venv/bin/python

Prints one table row per case and exits with status 1 when any case differs.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile

from remdm_jax.text.hf_tokenizer import HFTokenizer

SPECIALS = ["<|startoftext|>", "<|endoftext|>", "<|mdm_mask|>", "<|start_header_id|>",
            "<|end_header_id|>", "<|eot_id|>"]
CORPUS = ["The cat sat on the mat.", "What is two plus two? Two plus two is four.",
          "You are a helpful assistant.", "Lily can run 12 kilometers per hour for 4 hours.",
          "Écrivez un poème sur la mer, s'il vous plaît."]
TEMPLATES = {
    # LLaDA-8B-Instruct's tokenizer_config.json: it opens the assistant turn whatever
    # add_generation_prompt says.
    "llada-instruct": (
        "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
        "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] "
        "| trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content "
        "%}{% endif %}{{ content }}{% endfor %}{{ '<|start_header_id|>assistant"
        "<|end_header_id|>\n\n' }}"),
    "llama3-lines": (
        "{% for message in messages %}\n"
        "  {% if loop.first %}\n"
        "{{ bos_token }}\n"
        "  {%- endif %}\n"
        "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
        "{{ message['content'] | trim }}<|eot_id|>\n"
        "{%- endfor %}\n"
        "{% if add_generation_prompt %}\n"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
        "{% endif %}\n"),
    "helpers": (
        "{% set ns = namespace(system='') %}\n"
        "{% for m in messages %}\n"
        "    {% if m['role'] == 'system' %}\n"
        "        {% set ns.system = m['content'] %}\n"
        "        {% continue %}\n"
        "    {% endif %}\n"
        "    {% if m['role'] not in ['user', 'assistant'] %}\n"
        "        {{ raise_exception('unknown role ' + m['role']) }}\n"
        "    {% endif %}\n"
        "{{ bos_token if loop.first else '' }}<|start_header_id|>{{ m['role'] }}"
        "<|end_header_id|>\n\n"
        "    {% if m['role'] == 'assistant' %}\n"
        "{% generation %}{{ m['content'] }}{% endgeneration %}<|eot_id|>\n"
        "    {% else %}\n"
        "{{ {'system': ns.system, 'text': m['content']} | tojson }}<|eot_id|>\n"
        "    {% endif %}\n"
        "{% endfor %}\n"
        "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n"
        "{{ strftime_now('%Y') | length }}{{ eos_token }}{% endif %}"),
}
CONVERSATIONS = {
    "user": [{"role": "user", "content": "What is two plus two?"}],
    "system+user": [{"role": "system", "content": "You are a helpful assistant."},
                    {"role": "user", "content": "  Lily can run 12 kilometers per hour.\n"}],
    "2-turn": [{"role": "user", "content": "What is two plus two?"},
               {"role": "assistant", "content": " Two plus two is four. "}],
    "system+3-turn": [{"role": "system", "content": "Réponds en français."},
                      {"role": "user", "content": "Écrivez un poème sur la mer."},
                      {"role": "assistant", "content": "La mer, \"bleue\" & <calme>."},
                      {"role": "user", "content": "Encore!\t"}],
}

_REFERENCE = r"""
import json, sys
from transformers import AutoTokenizer
out = []
for case in json.load(sys.stdin):
  tok = AutoTokenizer.from_pretrained(case["folder"])
  try:
    text = tok.apply_chat_template(case["messages"], tokenize=False,
                                   add_generation_prompt=case["prompt"])
  except Exception as error:
    out.append({"error": type(error).__name__ + ": " + str(error)})
    continue
  ids = tok(text, add_special_tokens=False)["input_ids"]
  out.append({"text": text, "ids": ids, "decoded": tok.decode(ids, skip_special_tokens=True)})
print(json.dumps(out))
"""


def build_folder(folder: pathlib.Path, template: str) -> None:
  """A tokenizer folder laid out like LLaDA-8B-Instruct's, with `template` as its chat
  template."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  folder.mkdir(parents=True)
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=400, show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(CORPUS, trainer)
  tok.add_special_tokens(SPECIALS)
  tok.save(str(folder / "tokenizer.json"))
  added = {str(tok.token_to_id(s)): {"content": s, "lstrip": False, "normalized": False,
                                     "rstrip": False, "single_word": False, "special": True}
           for s in SPECIALS}
  config = {"add_bos_token": False, "add_eos_token": False, "added_tokens_decoder": added,
            "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
            "pad_token": "<|endoftext|>", "chat_template": template,
            "clean_up_tokenization_spaces": False,
            "tokenizer_class": "PreTrainedTokenizerFast"}
  (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def ours(case: dict) -> dict:
  tok = HFTokenizer(case["folder"])
  try:
    text = tok.apply_chat_template(case["messages"], add_generation_prompt=case["prompt"])
  except ValueError as error:
    return {"error": str(error)}
  ids = tok.encode(text, allow_special=True)       # as transformers encodes rendered text
  return {"text": text, "ids": ids, "decoded": tok.decode(ids)}


def reference(python: str, cases: list[dict]) -> list[dict]:
  run = subprocess.run([python, "-c", _REFERENCE], input=json.dumps(cases), text=True,
                       capture_output=True, check=False)
  if run.returncode != 0:
    raise SystemExit(f"the reference interpreter {python} failed:\n{run.stderr}")
  return json.loads(run.stdout.strip().splitlines()[-1])


def _cases(root: pathlib.Path) -> list[dict]:
  cases = []
  for name, template in TEMPLATES.items():
    build_folder(root / name, template)
    for chat, messages in CONVERSATIONS.items():
      for prompt in (False, True):
        cases.append({"template": name, "chat": chat, "prompt": prompt,
                      "folder": str(root / name), "messages": messages})
  cases.append({"template": "helpers", "chat": "bad role", "prompt": True,
                "folder": str(root / "helpers"),
                "messages": [{"role": "tool", "content": "x"}]})
  return cases


def _verdict(a: dict, b: dict, key: str) -> str:
  if "error" in a or "error" in b:
    return "both refuse" if "error" in a and "error" in b else "DIFFERS"
  return "match" if a[key] == b[key] else "DIFFERS"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--reference-python", required=True,
                      help="an interpreter with transformers, tokenizers and jinja2")
  args = parser.parse_args(argv)
  with tempfile.TemporaryDirectory() as tmp:
    cases = _cases(pathlib.Path(tmp))
    theirs = reference(args.reference_python, cases)
    mine = [ours(case) for case in cases]
  print("| template | conversation | generation prompt | tokens | text | ids | decode |")
  print("|---|---|---|---|---|---|---|")
  bad = 0
  for case, a, b in zip(cases, mine, theirs):
    verdicts = [_verdict(a, b, key) for key in ("text", "ids", "decoded")]
    bad += "DIFFERS" in verdicts
    print(f"| {case['template']} | {case['chat']} | {case['prompt']} | "
          f"{len(a.get('ids', []))} | " + " | ".join(verdicts) + " |")
  print(f"\n{len(cases) - bad} of {len(cases)} cases identical")
  for case, a, b in zip(cases, mine, theirs):
    if a != b and not ("error" in a and "error" in b):
      print(f"\n{case['template']} / {case['chat']} / {case['prompt']}:\n  ours   "
            f"{a!r:.400}\n  theirs {b!r:.400}")
  return 1 if bad else 0


if __name__ == "__main__":
  sys.exit(main())
