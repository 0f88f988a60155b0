#!/bin/sh
# check.sh: render the relayd units into a temporary directory, check them with
# `systemd-analyze verify`, and require a `systemd-analyze security --offline=true` exposure of
# at most RELAYD_MAX_EXPOSURE (default 1.0). Prints the score on success and everything on
# failure. Needs neither root nor a running systemd, nor an installed relayd.
set -eu

max=${RELAYD_MAX_EXPOSURE:-1.0}

if ! command -v systemd-analyze >/dev/null 2>&1; then
	echo "skip: systemd-analyze not found"
	exit 0
fi

here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
trap 'exit 1' HUP INT TERM

# verify checks that ExecStart= names an executable, so the units are rendered against a
# stand-in prefix holding empty programs in the installed layout. ($TMPDIR must not be
# mounted noexec, or those programs count as not executable.)
prefix=$tmp/prefix
mkdir -p "$prefix/bin" "$prefix/libexec/relayd"
for prog in "$prefix/bin/relayd" "$prefix/libexec/relayd/worker"; do
	printf '#!/bin/sh\nexit 0\n' >"$prog"
	chmod 755 "$prog"
done
"$here/render.sh" "$prefix" "$tmp/units"

# verify also loads the host units ours depend on (sockets.target, basic.target ...) and fails
# for their problems too, while it reports unknown keys and unparsable values in ours as warnings
# and exits 0. So the lines about our units decide; a failure without any message fails as well.
status=0
SYSTEMD_LOG_COLOR=0 systemd-analyze verify --man=no "$tmp/units/relayd.socket" "$tmp/units/relayd.service" \
	>"$tmp/verify.log" 2>&1 || status=$?
if grep -q -e 'relayd\.s' -e "$tmp" "$tmp/verify.log" || { [ "$status" -ne 0 ] && ! [ -s "$tmp/verify.log" ]; }; then
	echo "check.sh: systemd-analyze verify failed (exit $status):" >&2
	sed "s|$tmp/||g" "$tmp/verify.log" >&2
	exit 1
fi

status=0
LC_ALL=C.UTF-8 SYSTEMD_COLORS=0 systemd-analyze security --offline=true --no-pager \
	"$tmp/units/relayd.service" >"$tmp/security.log" 2>&1 || status=$?
score=$(sed -n 's/.*Overall exposure level for relayd\.service: \([0-9][0-9.]*\).*/\1/p' "$tmp/security.log")
if [ "$status" -ne 0 ] || [ -z "$score" ]; then
	echo "check.sh: systemd-analyze security failed (exit $status):" >&2
	sed "s|$tmp/||g" "$tmp/security.log" >&2
	exit 1
fi
if ! awk -v score="$score" -v max="$max" 'BEGIN { exit !(score + 0 <= max + 0) }'; then
	echo "check.sh: relayd.service exposure $score is above $max:" >&2
	grep -v '✓' "$tmp/security.log" >&2
	exit 1
fi
echo "relayd.service: exposure $score (at most $max), systemd-analyze verify ok"
