#!/usr/bin/env bash
# Installs the Debian packages sdtp needs to build and test (only those missing), then fetches the
# default model into ~/.cache/sdtp/models. Safe to run repeatedly.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

packages=(cmake g++ make pkg-config libopenblas-openmp-dev nlohmann-json3-dev libcpp-httplib-dev libgtest-dev
          python3 python3-pip python3-venv unzip
          fortunes-min bible-kjv bible-kjv-text)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "sdtp setup: installing ${missing[*]}" >&2
  sudo_cmd=()
  [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

"$here/fetch_model.sh" >/dev/null
