// Package ipc holds relayd's two wire protocols: NDJSON frames between clients and relayd, and NDJSON lines between relayd and its workers.
package ipc
