#!/usr/bin/env python3
"""Publish one payload with paho-mqtt (a stock client) and report the acknowledgement.

Usage: paho_publish.py HOST PORT CLIENT_ID USERNAME PASSWORD TOPIC PAYLOAD_FILE QOS [5]
Exits 0 when the broker acknowledged the message (PUBACK, or PUBCOMP for QoS 2) with a
success code, 1 otherwise.
"""
import sys
import time

import paho.mqtt.client as mqtt


def main() -> int:
    host, port, client_id, username, password, topic, payload_file, qos = sys.argv[1:9]
    v5 = len(sys.argv) > 9 and sys.argv[9] == "5"
    protocol = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
    client.username_pw_set(username, password)
    connected = {}

    def on_connect(_client, _userdata, _flags, reason_code, _properties):
        connected["rc"] = reason_code

    client.on_connect = on_connect
    client.connect(host, int(port), keepalive=30)
    client.loop_start()
    deadline = time.time() + 10
    while "rc" not in connected and time.time() < deadline:
        time.sleep(0.01)
    if connected.get("rc") is None or connected["rc"].is_failure:
        print(f"connect refused: {connected.get('rc')}", file=sys.stderr)
        return 1
    with open(payload_file, "rb") as f:
        payload = f.read()
    info = client.publish(topic, payload, qos=int(qos))
    info.wait_for_publish(timeout=10)
    ok = info.is_published() and info.rc == mqtt.MQTT_ERR_SUCCESS
    client.disconnect()
    client.loop_stop()
    print("published" if ok else f"not acknowledged: rc={info.rc}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
