# relayd configuration, in HCL. Pass it with `relayd --config FILE`; `systemctl reload relayd`
# (SIGHUP) re-reads it. Flags on the command line win over this file.
#
# Top-level keys are relayd's long flag names (`relayd --help` lists every one, with its
# default). Durations are strings ("5s", "250ms"); repeatable flags take a list.

log-level = "info"   # reloadable: trace, debug, info, warn, error
max-conns = 256      # needs a restart, like the socket and its mode

# Without a block of its own, the top-level keys configure "relay", the echo service. A block
# "relay" holds the same per-service keys; set each key in one place or the other.
service "relay" {
  args            = ["--delay=100ms"] # arguments of every worker (reloadable)
  spares          = 2                 # workers kept started and ready (needs a restart)
  message-timeout = "5s"              # bound of each attempt (reloadable)
}

# Every other block is a service of its own: its name is what clients put in "to"
# (relay-echo --to thumbs). A service has its own workers, queue, retry budget, stats and
# metrics; one service's trouble never touches another's. Its keys:
#
#   worker          executable to run, one process per message (required)
#   args            its arguments                                    reloadable
#   env             names of relayd's environment variables to pass  reloadable
#   transport       "stdio": the worker protocol on stdin and stdout
#   max-workers     most processes at once                           reloadable
#   queue           most messages waiting for a worker               reloadable
#   max-per-client  most messages of one connection in flight to it
#   spares          processes kept started and ready
#   max-requests    messages one process serves before it is replaced
#   message-timeout bound of each attempt                            reloadable
#   kill-grace      SIGTERM to SIGKILL                               reloadable
#   max-restarts    retries of a message whose worker crashed        reloadable
#   worker-rlimit-cpu, worker-rlimit-nofile, worker-rlimit-data, worker-rlimit-as  reloadable
#   worker-user, worker-group                 when relayd runs as root
#   allow-fault-injection                     RELAY_FAULTS=1, for tests  reloadable
#
# Keys left out take the defaults of `relayd --help`, not the values of relay's keys above.
# Adding or removing a block and reloading adds or removes the service; a removed service
# answers unknown_name at once and finishes the messages it holds.

service "thumbs" {
  worker          = "/opt/thumbs/worker.py"
  max-workers     = 8
  env             = ["LANG"]
  message-timeout = "30s"
}
