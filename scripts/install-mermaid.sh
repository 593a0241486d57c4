#!/usr/bin/env bash
# Unpack Mermaid's ES-module build from the npm registry's `mermaid` package into a
# virtual environment (VENV/share/parcourse/mermaid). book/_ext/offline_js.py copies it
# into the site's _static/ folder at build time, so the book's diagrams render without
# a CDN, and no JavaScript file is kept in git. The package is pinned by its SHA-256 (that
# of the registry's mermaid-11.12.1.tgz, whose sha512 is the registry's dist.integrity):
# any other file is refused before it is unpacked.
#
# Usage: scripts/install-mermaid.sh VENV   (needs npm: Debian's `apt-get install npm`)
set -euo pipefail
VENV=${1:?usage: scripts/install-mermaid.sh VENV}
VERSION=11.12.1  # the version sphinxcontrib-mermaid 2.1 is written for (its mermaid_version)
SHA256=3bd65ddefe97fb2e01d976a01d4078f8d773bfc56c6a75a9abf08b564ce0f8b2
here=$(cd "$(dirname "$0")" && pwd)
dest="$VENV/share/parcourse/mermaid"

if [ "$(cat "$dest/VERSION" 2>/dev/null)" = "$VERSION" ]; then
  touch "$dest/VERSION"; exit 0
fi
command -v npm >/dev/null || { echo "install-mermaid.sh needs npm (Debian: apt-get install npm)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "mermaid@$VERSION" >/dev/null)
"$here/check-sha256.sh" "$work/mermaid-$VERSION.tgz" "$SHA256"
tar -xzf "$work/mermaid-$VERSION.tgz" -C "$work" package/LICENSE \
  package/dist/mermaid.esm.min.mjs package/dist/chunks/mermaid.esm.min
rm -rf "$dest"
mkdir -p "$dest/chunks"
cp "$work/package/LICENSE" "$work/package/dist/mermaid.esm.min.mjs" "$dest/"
cp -r "$work/package/dist/chunks/mermaid.esm.min" "$dest/chunks/"
find "$dest" -name '*.map' -delete  # source maps: only a debugger asks for them
echo "$VERSION" > "$dest/VERSION"
echo "mermaid $VERSION: $(du -sh "$dest" | cut -f1) in $dest"
