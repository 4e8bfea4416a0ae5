#!/usr/bin/env python3
"""Play a fleet of devices against otadepot's device API, to try it out.

Each device (a thread) long-polls GET /device/v1/poll with its secret. An
update is downloaded (every file, its SHA-256 checked), then reported
DOWNLOADING, DOWNLOADED, INSTALLING and INSTALLED_VERSION (or FAILED);
a CANCEL is acknowledged; commands are ACKNOWLEDGED, then SUCCEEDED (or
FAILED). Progress is printed as it happens.

  scripts/simulate_devices.py secrets.csv [--base http://127.0.0.1:8080]
      [--step 1.0] [--fail-rate 0.0] [--duration 600] [--until-idle 0]

secrets.csv is what `otadepot devices import --secrets-out` writes
(endpoint_id,device_id,secret). --step is the pause between a device's
steps in seconds; --fail-rate the share of updates and commands that fail;
--until-idle N stops once no device has had anything to do for N seconds
(once the rollouts it plays are done); without it, it plays until
--duration seconds have passed or Ctrl-C. It prints the totals when it
stops, and exits 1 when no device had anything to do at all.
Only the Python standard library is used.
"""

import argparse
import csv
import hashlib
import json
import random
import sys
import threading
import time
import urllib.error
import urllib.request

lock = threading.Lock()
last_activity = time.monotonic()
stop = threading.Event()
totals = {"installed": 0, "failed": 0, "cancelled": 0, "commands_ok": 0, "commands_failed": 0}


def say(endpoint, text):
    global last_activity
    with lock:
        last_activity = time.monotonic()
        print(f"{time.strftime('%H:%M:%S')} {endpoint}: {text}", flush=True)


def call(base, method, path, secret, body=None, headers=None, raw=False, timeout=90):
    url = path if path.startswith("http") else base + path
    all_headers = {"Authorization": "Bearer " + secret, **(headers or {})}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        all_headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, headers=all_headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = response.read()
            etag = response.headers.get("ETag")
            if raw:
                return response.status, payload, etag
            return response.status, json.loads(payload) if payload else None, etag
    except urllib.error.HTTPError as error:
        if error.code == 304:
            return 304, None, error.headers.get("ETag")
        text = error.read().decode(errors="replace")
        try:
            return error.code, json.loads(text), None
        except ValueError:
            return error.code, text, None


def play_update(args, endpoint, secret, update):
    base, step = args.base, args.step
    update_id, action = update["id"], update["action"]

    def report(body):
        status, answer, _ = call(base, "POST", f"/device/v1/updates/{update_id}/status", secret, body)
        if status != 200:
            say(endpoint, f"report {body['status']} refused: {status} {answer}")
        return status

    if action == "CANCEL":
        report({"status": "CANCELLED"})
        say(endpoint, "update cancelled by the operator")
        with lock:
            totals["cancelled"] += 1
        return
    manifest = update["manifest"]
    version = manifest["version"]
    if action == "DOWNLOAD":
        say(endpoint, f"downloading {manifest.get('name', '')} {version}")
        report({"status": "ACKNOWLEDGED"})
        report({"status": "DOWNLOADING", "progress": 0})
        for file in manifest.get("files", []):
            status, blob, _ = call(base, "GET", file["url"], secret, raw=True, timeout=600)
            digest = hashlib.sha256(blob).hexdigest() if status == 200 else None
            if digest != file.get("sha256"):
                say(endpoint, f"download of {file.get('name')} failed ({status}, sha256 {digest})")
                report({"status": "FAILED", "errcode": "E_DOWNLOAD", "message": f"HTTP {status} or bad sha256"})
                with lock:
                    totals["failed"] += 1
                return
            time.sleep(step * random.uniform(0.3, 1.0))
        if report({"status": "DOWNLOADED"}) != 200:
            return
        say(endpoint, "downloaded")
        return  # the next poll says INSTALL once the install is released
    # INSTALL
    time.sleep(step * random.uniform(0.5, 1.0))
    report({"status": "INSTALLING"})
    time.sleep(step * random.uniform(0.5, 1.0))
    if random.random() < args.fail_rate:
        report({"status": "FAILED", "errcode": "E_FLASH", "message": "simulated flash failure"})
        say(endpoint, f"install of {version} FAILED (simulated)")
        with lock:
            totals["failed"] += 1
    elif report({"status": "INSTALLED_VERSION", "version": version}) == 200:
        say(endpoint, f"installed {version}")
        with lock:
            totals["installed"] += 1


def play_command(args, endpoint, secret, command, handled):
    if command["id"] in handled:
        return
    handled.add(command["id"])
    path = f"/device/v1/commands/{command['id']}"
    say(endpoint, f"command {command['name']} {json.dumps(command.get('args'))}")
    call(args.base, "POST", path, secret, {"status": "ACKNOWLEDGED"})
    time.sleep(args.step * random.uniform(0.5, 1.5))
    if random.random() < args.fail_rate:
        status, _, _ = call(args.base, "POST", path, secret,
                            {"status": "FAILED", "message": "simulated failure", "result": {"code": 17}})
        say(endpoint, f"command {command['name']} FAILED (simulated): {status}")
        with lock:
            totals["commands_failed"] += 1
    else:
        status, _, _ = call(args.base, "POST", path, secret, {"status": "SUCCEEDED", "result": {"uptime": 3}})
        say(endpoint, f"command {command['name']} SUCCEEDED: {status}")
        with lock:
            totals["commands_ok"] += 1


def device(args, endpoint, secret):
    etag = None
    handled = set()
    while not stop.is_set():
        headers = {"If-None-Match": etag} if etag else {}
        try:
            status, body, new_etag = call(args.base, "GET", "/device/v1/poll?wait=20", secret, headers=headers)
        except OSError as error:
            say(endpoint, f"poll failed: {error}; retrying")
            time.sleep(2)
            continue
        if status in (204, 304):
            etag = new_etag
            continue
        if status != 200:
            say(endpoint, f"poll answered {status}: {body}")
            time.sleep(5)
            continue
        etag = None  # act, then look again
        for command in body.get("commands") or []:
            play_command(args, endpoint, secret, command, handled)
        if body.get("update"):
            play_update(args, endpoint, secret, body["update"])
        time.sleep(args.step * random.uniform(0.2, 0.6))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("secrets", help="endpoint_id,device_id,secret CSV (from `otadepot devices import`)")
    parser.add_argument("--base", default="http://127.0.0.1:8080")
    parser.add_argument("--step", type=float, default=1.0)
    parser.add_argument("--fail-rate", type=float, default=0.0)
    parser.add_argument("--duration", type=float, default=600)
    parser.add_argument("--until-idle", type=float, default=0)
    args = parser.parse_args()
    with open(args.secrets, newline="") as f:
        rows = [r for r in csv.DictReader(f)]
    if not rows or "secret" not in rows[0]:
        sys.exit("the CSV needs a header row with endpoint_id and secret columns")
    threads = [threading.Thread(target=device, args=(args, r["endpoint_id"], r["secret"]), daemon=True) for r in rows]
    for t in threads:
        t.start()
    global last_activity
    with lock:
        last_activity = time.monotonic()  # idle counts from now, not from the start of Python
    until = f"until idle for {args.until_idle:g} s, " if args.until_idle else ""
    print(f"playing {len(threads)} device(s) against {args.base} {until}for at most {args.duration:g} s; "
          "Ctrl-C stops", flush=True)
    deadline = time.monotonic() + args.duration
    reason = f"{args.duration:g} s have passed"
    try:
        while time.monotonic() < deadline:
            time.sleep(0.2)
            with lock:
                idle = time.monotonic() - last_activity
            if args.until_idle and idle > args.until_idle:
                reason = f"no device had anything to do for {args.until_idle:g} s"
                break
    except KeyboardInterrupt:
        reason = "interrupted"
    stop.set()
    with lock:
        print(f"stopped: {reason}", flush=True)
        print("totals: " + json.dumps(totals), flush=True)
        if not any(totals.values()):
            sys.exit("no device had anything to do: is a deployment running, or a command queued, "
                     "for the devices of " + args.secrets + "?")


if __name__ == "__main__":
    main()
