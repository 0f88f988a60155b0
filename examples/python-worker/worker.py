#!/usr/bin/env python3
"""An example relayd worker in Python, standard library only (the protocol: docs/PROTOCOL.md).

Topic count answers a string with its number of words and characters. With RELAY_FAULTS=1
(allow-fault-injection = true) it also has crash (exit 3, no answer) and sleep (data seconds).
"""
import json, os, signal, sys, time

def answer(topic, data):
    if topic == "count":
        if not isinstance(data, str):
            return {"error": {"code": "bad_request", "message": "data of topic count must be a string"}}
        return {"data": {"words": len(data.split()), "chars": len(data)}}
    if os.environ.get("RELAY_FAULTS") == "1" and topic == "crash":
        os._exit(3)
    if os.environ.get("RELAY_FAULTS") == "1" and topic == "sleep":
        time.sleep(float(data))
        return {"data": "slept"}
    return {"error": {"code": "unknown_topic", "message": "unknown topic %s (topics: count)" % json.dumps(topic)}}

# relayd stops a worker past its deadline with SIGTERM; as the first process of its sandbox's PID
# namespace the worker gets no default action for it, so it says what to do.
signal.signal(signal.SIGTERM, lambda *_: os._exit(143))
print(json.dumps({"ready": True, "protocol": 1, "pid": os.getpid()}), flush=True)
for line in sys.stdin:
    if line.strip():
        request = json.loads(line)
        reply = {"id": request["id"], **answer(request["topic"], request.get("data"))}
        print(json.dumps(reply), flush=True)
