#!/bin/sh
# An example relayd worker in POSIX sh, with jq (the Debian package jq) for the JSON; the
# protocol is in docs/PROTOCOL.md. Topic count answers a string with its number of words and
# characters. With RELAY_FAULTS=1 (allow-fault-injection = true) it also has crash (exit 3, no
# answer) and sleep (data seconds). JQ names the jq to run, if it is not on PATH.
JQ=${JQ:-jq}

# relayd stops a worker past its deadline with SIGTERM. In relayd's sandbox the worker is the
# first process of a PID namespace, which gets no default action for SIGTERM: say it.
trap 'exit 143' TERM

# The ready line: relayd writes no request it would count as answered before it.
printf '{"ready":true,"protocol":1,"pid":%d}\n' "$$"

while IFS= read -r line; do
	[ -n "$line" ] || continue
	topic=$(printf '%s\n' "$line" | "$JQ" -r '.topic')
	case "$RELAY_FAULTS:$topic" in
	*:count)
		printf '%s\n' "$line" | "$JQ" -c 'if (.data | type) == "string"
			then {id, data: {words: ([.data | splits("[[:space:]]+") | select(length > 0)] | length), chars: (.data | length)}}
			else {id, error: {code: "bad_request", message: "data of topic count must be a string"}} end'
		;;
	1:crash)
		exit 3
		;;
	1:sleep)
		sleep "$(printf '%s\n' "$line" | "$JQ" -r '.data')"
		printf '%s\n' "$line" | "$JQ" -c '{id, data: "slept"}'
		;;
	*)
		printf '%s\n' "$line" | "$JQ" -c '{id, error: {code: "unknown_topic", message: ("unknown topic " + (.topic | tojson) + " (topics: count)")}}'
		;;
	esac
done
