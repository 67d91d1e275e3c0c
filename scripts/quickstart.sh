#!/usr/bin/env bash
# Bastion quick start: set everything up and scan a demo folder with the built-in database.
# Works on a fresh Debian machine with Python 3.11+; installs what it needs (apt for python3-venv
# when missing, pip into ./.venv).  Run from anywhere:  bash scripts/quickstart.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

ensure_python_venv
ensure_native_libs
make_venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e .

# A demo folder: one clean file, the EICAR test file and Bastion's canary, made here (never shipped).
rm -rf demo && mkdir -p demo/docs
printf 'Nothing to see here.\n' > demo/docs/readme.txt
.venv/bin/python - <<'PY'
eicar = "X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
open("demo/eicar.com", "w").write(eicar)
open("demo/docs/notes.txt", "w").write("meeting notes\nBASTION-TEST-CANARY-7f3a9c1e\n")
PY

echo "== bastion scan demo (built-in database)"
set +e
.venv/bin/bastion scan demo
code=$?
echo "== bastion-clamscan -r demo"
.venv/bin/bastion-clamscan -r demo
set -e
echo "bastion scan exit code: $code (1 = something found, as with clamscan)"
[ "$code" -eq 1 ] || { echo "expected the demo scan to find the EICAR file" >&2; exit 1; }
echo "Ready: .venv/bin/bastion and .venv/bin/bastion-clamscan"
