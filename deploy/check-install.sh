#!/usr/bin/env bash
# Installs into a scratch DESTDIR and checks the result: the layout, no program named echo on
# PATH, units that name the installed paths, and an installed relayd that finds its worker in
# libexec by default and answers through relay-echo.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$dest"' EXIT
pid=
make -s install DESTDIR="$dest" PREFIX=/usr/local >/dev/null
root="$dest/usr/local"
for f in bin/relayd bin/relay-echo libexec/relayd/worker libexec/relayd/worker-plugin lib/systemd/system/relayd.service lib/systemd/system/relayd.socket; do
	[ -e "$root/$f" ] || { echo "check-install: $f not installed" >&2; exit 1; }
done
if [ -e "$root/bin/echo" ] || [ -e "$root/bin/worker" ]; then
	echo "check-install: bin/ holds echo or worker; they must not shadow anything on PATH" >&2
	exit 1
fi
grep -q '^ExecStart=/usr/local/bin/relayd --worker=/usr/local/libexec/relayd/worker' "$root/lib/systemd/system/relayd.service" ||
	{ echo "check-install: ExecStart does not name the installed relayd and worker" >&2; exit 1; }
sock="$dest/s"
"$root/bin/relayd" --socket "$sock" --log-level=warn &
pid=$!
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
got=$("$root/bin/relay-echo" --socket "$sock" installed)
[ "$got" = INSTALLED ] || { echo "check-install: relay-echo answered \"$got\", want INSTALLED" >&2; exit 1; }
kill -TERM "$pid"
wait "$pid"
pid=
echo "make install: layout, units and the installed relayd ok"
