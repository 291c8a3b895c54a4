"""Tokenizers behind one interface: bytes, GPT-2 BPE built offline, and the tokenizer and chat
template of a released Hugging Face folder (`hf_tokenizer`, which imports `tokenizers` and
`jinja2` when used)."""
