#!/usr/bin/env bash
# System prerequisites outside pip: the one list, used by `make setup` (everything the chain needs) and by
# `make test` (plus what only the tests need; .ci/run calls `make test`, so CI uses this list too).
#
#   bash scripts/prereqs.sh [--tests] [--check]
#
# Finds each command; installs the missing ones with apt-get when it can (as root, or with sudo that asks for no
# password), saying what it installs and why; otherwise stops at once with the one command to run.
# --check only reports (exit 2 if something is missing). PREREQS_NO_INSTALL=1 does the same (used by a test).
set -euo pipefail

# command | Debian package | what needs it
NEEDED=(
  "g++|g++|compiling llama.cpp once for llama-cpp-python (make setup)"
  "cmake|cmake|compiling llama.cpp once for llama-cpp-python (make setup)"
  "go|golang-go|verifying the Ollama Modelfile TEMPLATE with Go's text/template (make gguf)"
)
TESTS_ONLY=(
  "chromium|chromium|the review app's real-browser test (make test)"
)

list=("${NEEDED[@]}")
install=1
for arg in "$@"; do
  case "$arg" in
    --tests) list+=("${TESTS_ONLY[@]}") ;;
    --check) install=0 ;;
    *) echo "usage: $0 [--tests] [--check]" >&2; exit 2 ;;
  esac
done
[ "${PREREQS_NO_INSTALL:-0}" = "1" ] && install=0

missing_pkgs=()
for entry in "${list[@]}"; do
  IFS='|' read -r cmd pkg why <<<"$entry"
  if ! command -v "$cmd" >/dev/null 2>&1; then
    echo "prereqs: \`$cmd\` not found (Debian package $pkg): needed for $why"
    missing_pkgs+=("$pkg")
  fi
done
[ ${#missing_pkgs[@]} -eq 0 ] && exit 0

as=()
can_install=0
if [ "$install" = "1" ] && command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ]; then
    can_install=1
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    can_install=1; as=(sudo)
  fi
fi

if [ "$can_install" = "0" ]; then
  if command -v apt-get >/dev/null 2>&1 || [ "$install" = "0" ]; then
    echo "error: missing system packages; run: sudo apt-get update && sudo apt-get install -y ${missing_pkgs[*]}  (then rerun make)" >&2
  else
    echo "error: missing system packages (Debian names: ${missing_pkgs[*]}); install them with your system's package manager, then rerun make" >&2
  fi
  exit 2
fi

echo "prereqs: installing ${missing_pkgs[*]} with apt-get"
export DEBIAN_FRONTEND=noninteractive
"${as[@]}" apt-get update -qq
"${as[@]}" apt-get install -y -qq "${missing_pkgs[@]}"
for entry in "${list[@]}"; do
  IFS='|' read -r cmd pkg why <<<"$entry"
  command -v "$cmd" >/dev/null 2>&1 || { echo "error: installed $pkg but \`$cmd\` is still not on PATH" >&2; exit 2; }
done
echo "prereqs: installed ${missing_pkgs[*]}"
