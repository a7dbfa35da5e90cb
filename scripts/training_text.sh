#!/usr/bin/env bash
# Prints the King James Bible (Debian package bible-kjv-text, read through the `bible` program of
# bible-kjv) as plain text, one verse per line without the verse references: the training text of
# the shipped SDTP predictor. The evaluation's haystack is the fortunes-min text, so nothing the
# evaluation uses is trained on.
#   scripts/training_text.sh > ~/.cache/sdtp/data/kjv.txt
set -euo pipefail
if ! command -v bible >/dev/null; then
  echo "training_text.sh: 'bible' not found; install the Debian packages bible-kjv and bible-kjv-text" >&2
  exit 1
fi
bible -f "Gen1:1-Rev22:21" | sed -E 's/^[0-9A-Za-z]+[0-9]+:[0-9]+ //'
