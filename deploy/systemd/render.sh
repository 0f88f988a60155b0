#!/bin/sh
# render.sh PREFIX OUTDIR: write relayd.service and relayd.socket into OUTDIR, with @PREFIX@ in
# the .in templates beside this script replaced by PREFIX (where relayd is installed, e.g.
# /usr/local; without any DESTDIR). `make install` and check.sh both use it.
set -eu

usage() {
	echo "usage: render.sh PREFIX OUTDIR" >&2
	exit 2
}

[ $# -eq 2 ] || usage
prefix=$1
outdir=$2

# The prefix ends up in ExecStart=, which wants an absolute path without spaces, and in a sed
# replacement, where | & and \ are special.
case $prefix in
/*) ;;
*) echo "render.sh: prefix $prefix is not an absolute path" >&2; exit 2 ;;
esac
case $prefix in
*[!A-Za-z0-9/._+-]*) echo "render.sh: prefix $prefix has characters other than A-Za-z0-9/._+-" >&2; exit 2 ;;
esac
prefix=${prefix%/}

here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$outdir"
for unit in relayd.service relayd.socket; do
	sed "s|@PREFIX@|$prefix|g" "$here/$unit.in" >"$outdir/$unit.tmp"
	if grep -q '@[A-Z_]*@' "$outdir/$unit.tmp"; then
		echo "render.sh: $unit.in has a placeholder other than @PREFIX@" >&2
		rm -f "$outdir/$unit.tmp"
		exit 1
	fi
	chmod 644 "$outdir/$unit.tmp"
	mv "$outdir/$unit.tmp" "$outdir/$unit"
done
