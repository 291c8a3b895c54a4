"""Files and processes the tests share: a tiny LLaDA-style tokenizer folder (byte-level BPE,
the specials appended, a chat template) and a process holding a folder's lock."""

import contextlib
import json
import signal
import subprocess
import sys
import textwrap

SPECIALS = ["<|startoftext|>", "<|endoftext|>", "<|mdm_mask|>", "<|start_header_id|>",
            "<|end_header_id|>", "<|eot_id|>"]
# Llama-3 style, written over several indented lines so that trim_blocks and lstrip_blocks
# decide the output.
TEMPLATE = """{% for message in messages %}
  {% if loop.first %}
{{ bos_token }}
  {%- endif %}
<|start_header_id|>{{ message['role'] }}<|end_header_id|>

{{ message['content'] | trim }}<|eot_id|>
{%- endfor %}
{% if add_generation_prompt %}
<|start_header_id|>assistant<|end_header_id|>

{% endif %}
"""


def write_tokenizer(folder):
  """A byte-level BPE trained on three sentences, the specials appended after it (as
  LLaDA's come after its vocabulary)."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=300, show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(["The cat sat on the mat.", "What is two plus two?",
                           "Two plus two is four."], trainer)
  tok.add_special_tokens(SPECIALS)
  tok.save(str(folder / "tokenizer.json"))
  return tok


def write_tokenizer_folder(folder, *, template=TEMPLATE, config=None, specials=None):
  folder.mkdir(exist_ok=True)
  tok = write_tokenizer(folder)
  tokenizer_config = {"bos_token": "<|startoftext|>",
                      "eos_token": {"content": "<|endoftext|>", "special": True}}
  tokenizer_config.update(specials or {})
  if template is not None:
    tokenizer_config["chat_template"] = template
  (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
  if config is not None:
    (folder / "config.json").write_text(json.dumps(config))
  return tok


HOLDER_SCRIPT = textwrap.dedent("""
    import sys, time
    from remdm_jax.parallel import locks
    with locks.hold(sys.argv[1], "workdir"):
      print("holding", flush=True)
      time.sleep(120)
""")


@contextlib.contextmanager
def lock_holder(folder):
  """A process holding the lock of `folder`, killed with SIGKILL at the end of the block."""
  with subprocess.Popen([sys.executable, "-c", HOLDER_SCRIPT, str(folder)], stdout=subprocess.PIPE,
                        text=True) as holder:
    try:
      assert holder.stdout.readline().strip() == "holding"
      yield holder
    finally:
      holder.send_signal(signal.SIGKILL)
      holder.wait(timeout=30)
