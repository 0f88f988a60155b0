#!/usr/bin/python3
"""A relayd worker plugin in Python, over gRPC: it answers the topic echo with its data uppercased.

relayd runs it as a service with transport "grpc" (see the plugin section of docs/PROTOCOL.md):

    service "pyecho" {
      worker    = "/path/to/examples/python-plugin/plugin.py"
      transport = "grpc"
    }

It needs Python 3 with grpcio and protobuf (Debian: python3-grpcio python3-protobuf), and
worker_pb2.py beside it (generated from sdk/plugin/pluginpb/worker.proto by `make proto`). It
implements what go-plugin expects of a gRPC plugin in any language: the service, the gRPC health
service (service "plugin"), go-plugin's controller (Shutdown), and the handshake line on stdout
for a socket of its own (a Unix socket in $TMPDIR, or with --tcp a free TCP port), so that
plugins started at once never collide.
"""

import argparse
import datetime
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
from concurrent import futures

sys.dont_write_bytecode = True  # Leave no __pycache__ beside the plugin.

import grpc  # noqa: E402

import worker_pb2  # noqa: E402

# relayd's handshake: the magic cookie in the environment, and protocol version 1.
MAGIC_COOKIE_KEY = "RELAYD_PLUGIN"
MAGIC_COOKIE_VALUE = "7f3c9a2e5b1d4e08-relayd-worker"
PROTOCOL_VERSION = 1
# go-plugin's core protocol version, the first field of the handshake line.
CORE_PROTOCOL_VERSION = 1

# grpc.health.v1.HealthCheckResponse{status: SERVING}, encoded by hand (field 1, varint 1): the
# health service's messages are too small to need their generated module.
HEALTH_SERVING = b"\x08\x01"


def log(level, message, **fields):
    """Writes one hclog JSON line to stderr; relayd logs it with its fields and our pid."""
    entry = {
        "@level": level,
        "@message": message,
        "@module": "python-plugin",
        "@timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(),
    }
    entry.update(fields)
    print(json.dumps(entry), file=sys.stderr, flush=True)


def handle(request, context):
    """The worker protocol's one call: topic and data (JSON) in, data or an error out."""
    if request.topic != "echo":
        return worker_pb2.HandleResponse(
            error=worker_pb2.Error(code="unknown_topic", message="unknown topic %r" % request.topic))
    try:
        text = json.loads(request.data)
    except ValueError:
        text = None
    if not isinstance(text, str):
        return worker_pb2.HandleResponse(
            error=worker_pb2.Error(code="bad_request", message="data of topic echo must be a JSON string"))
    return worker_pb2.HandleResponse(data=json.dumps(text.upper(), ensure_ascii=False).encode())


def main():
    parser = argparse.ArgumentParser(description="A relayd worker plugin in Python, over gRPC.")
    parser.add_argument("--without-controller", action="store_true",
                        help="do not serve go-plugin's controller, as many plugins in other languages "
                             "do not: relayd then stops the plugin with SIGTERM")
    parser.add_argument("--tcp", action="store_true",
                        help="listen on a free TCP port of 127.0.0.1 instead of a Unix socket in $TMPDIR "
                             "(relayd's sandbox lets a worker use TCP only with network = true)")
    args = parser.parse_args()
    if os.environ.get(MAGIC_COOKIE_KEY) != MAGIC_COOKIE_VALUE:
        print("This is a relayd plugin: relayd starts it for a service with transport \"grpc\".",
              file=sys.stderr)
        return 1

    stop = threading.Event()

    def shutdown(request, context):
        stop.set()
        return b""

    def health_check(request, context):
        return HEALTH_SERVING

    identity = lambda b: b  # noqa: E731 - raw bytes in and out
    handlers = [
        grpc.method_handlers_generic_handler("relayd.plugin.v1.Worker", {
            "Handle": grpc.unary_unary_rpc_method_handler(
                handle,
                request_deserializer=worker_pb2.HandleRequest.FromString,
                response_serializer=worker_pb2.HandleResponse.SerializeToString),
        }),
        grpc.method_handlers_generic_handler("grpc.health.v1.Health", {
            "Check": grpc.unary_unary_rpc_method_handler(
                health_check, request_deserializer=identity, response_serializer=identity),
        }),
    ]
    if not args.without_controller:
        handlers.append(grpc.method_handlers_generic_handler("plugin.GRPCController", {
            "Shutdown": grpc.unary_unary_rpc_method_handler(
                shutdown, request_deserializer=identity, response_serializer=identity),
        }))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers(handlers)
    # A socket of its own, so that plugins started at once never collide: a Unix socket in a new
    # directory under $TMPDIR (relayd gives each worker a private one), or TCP port 0, for which
    # the kernel picks a free port.
    socket_dir = None
    if args.tcp:
        port = server.add_insecure_port("127.0.0.1:0")
        network, address = "tcp", "127.0.0.1:%d" % port
    else:
        socket_dir = tempfile.mkdtemp(prefix="plugin-", dir=os.environ.get("PLUGIN_UNIX_SOCKET_DIR"))
        address = os.path.join(socket_dir, "plugin.sock")
        server.add_insecure_port("unix:" + address)
        network = "unix"
    server.start()

    # SIGTERM is a graceful stop, as the controller's Shutdown is: finish the call in
    # progress, then exit 0.
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())

    # The handshake line: core protocol|app protocol|network|address|protocol. Nothing else
    # may be written to stdout.
    print("%d|%d|%s|%s|grpc" % (CORE_PROTOCOL_VERSION, PROTOCOL_VERSION, network, address), flush=True)
    log("info", "serving", network=network, address=address)

    try:
        # A short wait, again and again: the handler runs in this thread between bytecodes,
        # so a SIGTERM that lands after Event.wait checked the flag but before it started
        # waiting sets it unseen; the next round sees it.
        while not stop.wait(1):
            pass
        server.stop(grace=5).wait()
    finally:
        if socket_dir:
            shutil.rmtree(socket_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
