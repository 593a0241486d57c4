#!/usr/bin/env bash
# Check that a downloaded FILE is the release a build script pins: its SHA-256 must be
# EXPECTED. On a mismatch, say so in one line on stderr and exit 1 (the caller installs
# nothing). Used by install-horovod.sh and install-mermaid.sh.
#
# Usage: scripts/check-sha256.sh FILE EXPECTED
set -euo pipefail
file=${1:?usage: scripts/check-sha256.sh FILE EXPECTED}
expected=${2:?usage: scripts/check-sha256.sh FILE EXPECTED}
if command -v sha256sum >/dev/null; then
  actual=$(sha256sum "$file" | cut -d' ' -f1)
else  # macOS
  actual=$(shasum -a 256 "$file" | cut -d' ' -f1)
fi
if [ "$actual" != "$expected" ]; then
  echo "error: $(basename "$file") has SHA-256 $actual, not the pinned $expected:" \
       "the download is not the release this build pins; nothing was installed" >&2
  exit 1
fi
