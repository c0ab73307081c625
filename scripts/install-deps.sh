#!/usr/bin/env bash
# Installs conveyor's build dependencies from Debian packages (idempotent; needs root or sudo).
set -euo pipefail
packages=(build-essential cmake ninja-build pkg-config libfmt-dev libspdlog-dev libgtest-dev
  libbenchmark-dev nlohmann-json3-dev libcli11-dev libopenblas-dev libpcre2-dev libutf8proc-dev libcpp-httplib-dev clang
  openmpi-bin libopenmpi-dev iproute2 util-linux
  libclang-rt-14-dev python3 python3-pip python3-venv)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi
sudo_cmd=""
[ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
echo "install-deps: installing ${missing[*]}"
$sudo_cmd apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}"
