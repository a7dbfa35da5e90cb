#!/usr/bin/env python3
"""Rewrites the --help blocks in docs/cli.md and docs/evaluation.md from the built binary, so the docs stay word for word
in line with the code (tests/cli checks this). Usage: scripts/update_cli_docs.py [build/sdtp]"""
import re
import subprocess
import sys
from pathlib import Path

root = Path(__file__).resolve().parent.parent
binary = sys.argv[1] if len(sys.argv) > 1 else str(root / "build" / "sdtp")


def replace(match):
    invocation = match.group(1)  # "sdtp --help" or "sdtp CMD --help"
    cmd = [binary] + invocation.split()[1:]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.rstrip("\n")
    return "```text\n$ " + invocation + "\n" + out + "\n```"


for doc in (root / "docs" / "cli.md", root / "docs" / "evaluation.md"):
    text = re.sub(r"```text\n\$ (sdtp[^\n]*--help)\n.*?```", replace, doc.read_text(), flags=re.S)
    doc.write_text(text)
