#!/usr/bin/env bash
# Prepares the reference code of the LLaDA benchmarks in DIR (see benchmarks/README.md):
# each repository of benchmarks/references.py cloned and checked out at its pinned commit,
# and DIR/venv, a Python with CPU torch and transformers for the reference side.
#
#   benchmarks/prepare_references.sh DIR
#   export REMDM_REFERENCES=DIR     # or pass --references=DIR to each benchmark
set -euo pipefail
if [[ $# -ne 1 ]]; then
  echo "usage: $0 DIR" >&2
  exit 2
fi
dir=$1
here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-python3}
mkdir -p "$dir"
"$python" "$here/references.py" | while read -r folder url commit; do
  if [[ ! -d "$dir/$folder/.git" ]]; then
    git clone --quiet "$url" "$dir/$folder"
  fi
  git -C "$dir/$folder" checkout --quiet "$commit"
  echo "$folder: $(git -C "$dir/$folder" rev-parse HEAD)"
done
"$python" -m venv "$dir/venv"
"$dir/venv/bin/pip" install --quiet torch==2.14.1 --index-url https://download.pytorch.org/whl/cpu
"$dir/venv/bin/pip" install --quiet transformers==5.24.0 tokenizers jinja2 numpy einops
echo "prepared $dir; export REMDM_REFERENCES=$dir"
