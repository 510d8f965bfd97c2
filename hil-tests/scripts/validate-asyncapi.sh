#!/usr/bin/env bash
# Validate the AsyncAPI document in docs/mqtt.md with the reference parser
# (@asyncapi/parser from npm; needs node and npm). Prints the parser's
# diagnostics; exits non-zero if the document does not parse.
#
#   hil-tests/scripts/validate-asyncapi.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 - "$root/docs/mqtt.md" "$work/doc.json" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
block = re.search(r'asyncapi:begin[^\n]*\n```json\n(.*?)\n```', text, re.S)
open(sys.argv[2], 'w').write(block.group(1))
PY
cd "$work"
npm install --silent --no-audit --no-fund @asyncapi/parser@3 > /dev/null
cat > check.mjs <<'JS'
import { Parser } from '@asyncapi/parser';
import fs from 'fs';
const severities = ['error', 'warning', 'info', 'hint'];
const { document, diagnostics } = await new Parser().parse(fs.readFileSync('doc.json', 'utf8'));
for (const d of diagnostics) console.log(`${severities[d.severity]}: ${d.message} at ${d.path.join('.')}`);
if (!document || diagnostics.some(d => d.severity === 0)) { console.log('invalid'); process.exit(1); }
console.log('valid AsyncAPI document');
JS
node check.mjs
