"""Records over MQTT (``sluice-agent run --mqtt host:port``): each record of a batch is one QoS 1
message to the device's own topic ``sluice/<tenant>/<group>/<device>/records`` on Sluice's
Mosquitto, with the MQTT 5 user property ``sluice-idempotency-key`` = ``<batch key>.<index>``.

A batch is acknowledged (leaves the buffer) only when Sluice's bridge said, on the device's
``sluice/<tenant>/<group>/<device>/acks`` topic (subscribed at connect), that Kafka
acknowledged every one of its keys (acks=all): written to the stream, or dead-lettered (an
invalid record: MQTT has no 422, the bridge keeps it in the tenant's DLQ with its reasons).
Mosquitto's own PUBACK only means Mosquitto has the message.  A batch sent again after a cut
connection, a restart, or a confirmation that never came carries the same keys, and the
bridge writes a key it already wrote for this device only once (24 h window) and confirms it
again, so a retry never duplicates.  What comes back, as the HTTPS sender's ``Answer``:

* every key confirmed: 200 (the dead-lettered and dropped ones are logged);
* a publish refused as not authorized (135), or a connection refused (134 bad credentials,
  135 not authorized): 403 (the agent stops, keeping its records; with a token, 401 first,
  and the sender tries once more with a new token);
* any other refusal, no PUBACK or no confirmation within ``TIMEOUT``, or the connection
  lost: an ``OSError`` (the same batch again later).

The identity comes from the credential: a certificate's ``O`` (tenant), ``OU`` (group) and
``CN`` (device); a token's ``tenant``, ``device`` and ``kafka_principal``
(``<tenant>.<group>.<client>``) claims.  The token (client credentials, over HTTPS) is the
MQTT password; EST renewal stays on HTTPS.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from sluice_agent.transport import Answer, Credentials, Sluice

log = logging.getLogger("sluice_agent")
TIMEOUT = 30.0
KEY_PROPERTY = "sluice-idempotency-key"
ACCEPTED = (0, 16)
NOT_AUTHORIZED = 135
BAD_CREDENTIALS = 134


def _refused(code: str, message: str, status: int = 403) -> Answer:
    return Answer(status, {}, {"error": {"code": code, "message": message}})


def token_identity(token: str) -> tuple[str, str, str]:
    """(tenant, group, device) from an access token's claims (read, not verified: Sluice verifies it)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        tenant, device, principal = claims["tenant"], claims["device"], claims["kafka_principal"]
        group = principal.split(".")[1]
    except (IndexError, KeyError, ValueError, AttributeError, TypeError) as exc:
        raise ValueError(f"the access token does not name a device's tenant, group and device ({exc})") from None
    return str(tenant), str(group), str(device)


def certificate_identity(path: Any) -> tuple[str, str, str]:
    """(tenant, group, device) from a device certificate's subject (O, OU, CN)."""
    subject = x509.load_pem_x509_certificates(path.read_bytes())[0].subject
    values = []
    for oid in (NameOID.ORGANIZATION_NAME, NameOID.ORGANIZATIONAL_UNIT_NAME, NameOID.COMMON_NAME):
        found = subject.get_attributes_for_oid(oid)
        if not found:
            raise ValueError("the certificate does not name a tenant (O), group (OU) and device (CN)")
        values.append(str(found[0].value))
    return values[0], values[1], values[2]


class MqttSluice:
    """Batches over MQTT; the token endpoint and EST over HTTPS (``https``).  Offers what the
    ``Forwarder`` uses of ``transport.Sluice``: ``send``, ``credentials``, ``renew_certificate``,
    ``close``."""

    def __init__(self, address: str, https: Sluice) -> None:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"--mqtt must be host:port (got {address!r})")
        self.host, self.port = host, int(port)
        self.https = https
        self._client: Any = None
        self._changed = threading.Condition()
        self._connack: int | None = None
        self._connected = False
        self._acks: dict[int, int] = {}
        self._confirmed: dict[str, str] = {}  # key -> outcome, from the bridge
        self._suback: int | None = None
        self._topic = ""
        self._acks_topic = ""

    @property
    def credentials(self) -> Credentials:
        return self.https.credentials

    def close(self) -> None:
        self._drop()
        self.https.close()

    def renew_certificate(self) -> x509.Certificate:
        renewed = self.https.renew_certificate()
        self._drop()  # the next batch connects with the new certificate
        return renewed

    def _drop(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None

    # -- the connection ------------------------------------------------------------------

    def _connect(self) -> Answer | None:
        """Connect (None) or say why the broker refused (an Answer); OSError when unreachable."""
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        credentials = self.credentials
        password = self.https.token() if credentials.uses_token else None
        if password is not None:
            tenant, group, device = token_identity(password)
        else:
            assert credentials.cert is not None
            tenant, group, device = certificate_identity(credentials.cert)
        prefix = f"sluice/{tenant}/{group}/{device}/"
        self._topic, self._acks_topic = prefix + "records", prefix + "acks"
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{tenant}/{device}/agent", protocol=mqtt.MQTTv5)
        client.tls_set_context(credentials.context())
        if password is not None:
            client.username_pw_set("device", password)
        client.max_inflight_messages_set(100)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        with self._changed:
            self._connack, self._connected, self._acks, self._suback = None, False, {}, None
        client.connect(self.host, self.port, keepalive=30, clean_start=True)
        client.loop_start()
        self._client = client
        with self._changed:
            self._changed.wait_for(lambda: self._connack is not None, timeout=TIMEOUT)
            connack = self._connack
        if connack is None:
            self._drop()
            raise OSError("no CONNACK from Mosquitto")
        if connack == 0:
            return self._subscribe()
        self._drop()
        if connack in (BAD_CREDENTIALS, NOT_AUTHORIZED):
            # A token's refusal is a 401: the sender fetches a new token once before it stops.
            return _refused("mqtt_connection_refused", f"Mosquitto refused the connection (reason {connack})",
                            401 if credentials.uses_token else 403)  # fmt: skip
        raise OSError(f"Mosquitto refused the connection (reason {connack})")

    def _subscribe(self) -> Answer | None:
        """Subscribe to the device's acks topic before anything is sent (what the bridge says
        while nobody listens is lost; the resend of that batch is confirmed instead)."""
        self._client.subscribe(self._acks_topic, qos=1)
        with self._changed:
            self._changed.wait_for(lambda: self._suback is not None or not self._connected, timeout=TIMEOUT)
            suback = self._suback
        if suback is None:
            self._drop()
            raise OSError("no SUBACK from Mosquitto for the acks topic")
        if suback == NOT_AUTHORIZED:
            self._drop()
            return _refused("not_authorized", f"Mosquitto refused a subscription to {self._acks_topic} (135)")
        if suback >= 128:
            self._drop()
            raise OSError(f"Mosquitto refused a subscription to {self._acks_topic} (reason {suback})")
        return None

    def _on_subscribe(self, _c: Any, _u: Any, _mid: int, reasons: list[Any], _p: Any) -> None:
        with self._changed:
            self._suback = int(reasons[0].value) if reasons else 128
            self._changed.notify_all()

    def _on_message(self, _c: Any, _u: Any, message: Any) -> None:
        try:
            told = json.loads(message.payload)
            pairs = [(str(key), outcome) for outcome, keys in told.items() for key in keys]
        except (ValueError, AttributeError, TypeError):
            log.warning("an unreadable confirmation on %s: ignored", message.topic)
            return
        with self._changed:
            self._confirmed.update(pairs)
            self._changed.notify_all()

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        with self._changed:
            self._connack = int(reason.value)
            self._connected = not reason.is_failure
            self._changed.notify_all()

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, _reason: Any, _p: Any) -> None:
        with self._changed:
            self._connected = False
            if self._connack is None:
                self._connack = -1
            self._changed.notify_all()

    def _on_publish(self, _c: Any, _u: Any, mid: int, reason: Any, _p: Any) -> None:
        with self._changed:
            self._acks[mid] = int(reason.value)
            self._changed.notify_all()

    # -- a batch -------------------------------------------------------------------------

    def send(self, body: bytes, key: str) -> Answer:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        if self._client is None or not self._connected:
            self._drop()
            refused = self._connect()
            if refused is not None:
                return refused
        with self._changed:
            # Confirmations of an earlier attempt that came too late: this one is confirmed anew.
            self._confirmed.clear()
        lines = [line for line in body.decode().split("\n") if line]
        mids = []
        for index, line in enumerate(lines):
            properties = Properties(PacketTypes.PUBLISH)
            properties.UserProperty = (KEY_PROPERTY, f"{key}.{index}")
            info = self._client.publish(self._topic, line.encode(), qos=1, properties=properties)
            if info.rc != 0:
                self._drop()
                raise OSError(f"the publish could not be sent (paho error {info.rc})")
            mids.append(info.mid)
        keys = [f"{key}.{index}" for index in range(len(lines))]
        deadline = time.monotonic() + TIMEOUT
        with self._changed:
            while not all(mid in self._acks for mid in mids) or not all(k in self._confirmed for k in keys):
                left = deadline - time.monotonic()
                if left <= 0 or not self._connected:
                    break
                if any(self._acks.get(mid, 0) >= 128 for mid in mids):
                    break  # refused: no confirmation will come
                self._changed.wait(min(left, 1.0))
            reasons = [self._acks.pop(mid, None) for mid in mids]
            outcomes = [self._confirmed.pop(k, None) for k in keys]
        if NOT_AUTHORIZED in reasons:
            return _refused("not_authorized", f"Mosquitto refused to take records on {self._topic} (135)")
        wrong = sorted({reason for reason in reasons if reason is not None and reason not in ACCEPTED})
        if wrong:
            raise OSError(f"Mosquitto refused records (reasons {wrong})")
        if any(reason is None for reason in reasons):
            self._drop()
            raise OSError(f"{sum(r is None for r in reasons)} of {len(mids)} records got no PUBACK")
        if any(outcome is None for outcome in outcomes):
            # Mosquitto has them; Kafka's acknowledgement was not confirmed in time (the bridge
            # is away or behind): the same batch again later, which the keys make harmless.
            raise OSError(f"{sum(o is None for o in outcomes)} of {len(keys)} records not confirmed in Kafka yet")
        for outcome in ("dead_lettered", "dropped"):
            count = outcomes.count(outcome)
            if count:
                log.error("batch %s: %d record(s) %s by Sluice (the tenant's dead-letter topic says why)"
                          if outcome == "dead_lettered" else "batch %s: %d record(s) %s by Sluice (see its log)",
                          key, count, outcome)  # fmt: skip
        return Answer(
            200, {}, {"accepted": outcomes.count("written"), "dead_lettered": outcomes.count("dead_lettered")}
        )
