"""The PKI's writes: tenant issuing CAs, device certificate issuance (from a CSR or
server-generated), revocation and CRL publication.  Private keys Sluice generates for
devices are returned once and never stored; CA keys are stored only encrypted."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from certs import ca, crl_files, selectors
from certs.models import Certificate, CertificateAuthority
from certs.platform_pki import ensure_root
from certs.principals import consumer_subject, device_subject, new_certificate_id
from config.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge, PermissionDenied
from devices import selectors as device_selectors
from devices.models import Consumer, Device, DeviceGroup
from devices.principals import consumer_principal, credential_principal
from tenants import policy
from tenants.audit import Actor, audit_record
from tenants.models import Tenant
from tenants.rights import rights_changed
from tenants.scoping import Scope

TENANT_CA_VALID_DAYS = 5 * 365
CRL_VALIDITY = dt.timedelta(days=1)
MIN_PASSPHRASE = 8
REASONS = {r.name: r for r in x509.ReasonFlags if r not in (x509.ReasonFlags.remove_from_crl,)}


def crl_name(authority: CertificateAuthority) -> str:
    return f"{authority.tenant.slug}-{authority.serial[:16]}"


def device_uri(*, tenant: str, group: str, device: str) -> str:
    """The SAN that names the device (RFC 3986 URN form)."""
    return f"urn:sluice:device:{tenant}:{group}:{device}"


def ca_issuer(authority: CertificateAuthority) -> ca.Issuer:
    rt = settings.SLUICE_RUNTIME
    return ca.Issuer(
        certificate=ca.load_certificate(authority.certificate_pem.encode()),
        key=ca.load_private_key(authority.encrypted_key_pem.encode(), rt.key_encryption_key),
    )


def tenant_ca_create(*, actor: Actor, tenant: Tenant) -> CertificateAuthority:
    """A new issuing CA for ``tenant``, signed by the platform root, with an empty CRL."""
    rt = settings.SLUICE_RUNTIME
    root = ensure_root(rt)
    key = ca.generate_key()
    cert = ca.create_issuing_ca(
        issuer=root,
        subject=ca.name(O=tenant.slug, CN=f"{tenant.slug} issuing CA"),
        public_key=key.public_key(),
        valid_days=TENANT_CA_VALID_DAYS,
        crl_urls=[rt.crl_url(crl_files.ROOT_CRL_NAME)],
    )
    with transaction.atomic():
        # Rotation: the current CA keeps being trusted (and its CRL published) but stops
        # issuing; the one-active-CA constraint holds at every instant.
        CertificateAuthority.objects.filter(tenant=tenant, status=CertificateAuthority.Status.ACTIVE).update(
            status=CertificateAuthority.Status.RETIRING
        )
        authority = CertificateAuthority.objects.create(
            tenant=tenant,
            subject=cert.subject.rfc4514_string(),
            serial=format(cert.serial_number, "x"),
            certificate_pem=ca.certificate_pem(cert).decode(),
            encrypted_key_pem=ca.private_key_pem(key, rt.key_encryption_key).decode(),
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
        )
        audit_record(actor=actor, tenant=tenant, action="ca.create", obj=authority,
                     after={"subject": authority.subject, "serial": authority.serial,
                            "not_after": authority.not_after.isoformat()})  # fmt: skip
        crl_publish(authority=authority)
        anchor_publish(authority=authority)
    return authority


def anchor_publish(*, authority: CertificateAuthority) -> None:
    """After the commit, give nginx the CA's anchor CRL (certs.crl_files: the CA-level CRL
    nginx checks chains against; leaf revocations are enforced by the application)."""
    name = crl_name(authority)
    anchor = crl_files.anchor_crl(ca_issuer(authority), valid_until=authority.not_after)
    transaction.on_commit(lambda: crl_files.write_anchor(settings.SLUICE_RUNTIME, name, anchor))


def active_ca(tenant: Tenant) -> CertificateAuthority:
    authorities = selectors.authority_list(scope=Scope.of_tenant(tenant))
    authority = authorities.filter(status=CertificateAuthority.Status.ACTIVE).first()
    if authority is None:
        raise Conflict(f"Tenant '{tenant.slug}' has no active issuing CA.")
    return authority


def crl_publish(*, authority: CertificateAuthority) -> x509.CertificateRevocationList:
    """Regenerate the CA's CRL (next CRL number) and publish it as DER and PEM."""
    with transaction.atomic():
        locked = CertificateAuthority.objects.select_for_update().get(pk=authority.pk)
        revoked = [
            ca.Revoked(int(c.serial, 16), c.revoked_at or timezone.now(), REASONS.get(c.revocation_reason))
            for c in Certificate.objects.filter(ca=locked, status=Certificate.Status.REVOKED)
        ]
        number = locked.crl_number + 1
        crl = ca.build_crl(issuer=ca_issuer(locked), revoked=revoked, number=number, valid_for=CRL_VALIDITY)
        from cryptography.hazmat.primitives import serialization

        CertificateAuthority.objects.filter(pk=locked.pk).update(
            crl_number=number, crl_der=crl.public_bytes(serialization.Encoding.DER), crl_next_update=crl.next_update_utc
        )
        name = crl_name(locked)
        transaction.on_commit(lambda: crl_files.write_crl(settings.SLUICE_RUNTIME, name, crl))
    return crl


@dataclass(frozen=True)
class Issued:
    certificate: Certificate
    chain_pem: str  # leaf, then the tenant CA (the root is the trust anchor clients already hold)
    key_pem: str | None = None  # server-generated only, returned once
    pkcs12: bytes | None = None


def _usable_group(device: Device) -> DeviceGroup:
    """The device's group, if the policy lets ``device`` get a certificate (an InvalidInput,
    with the group's refusal as a field error, if not)."""
    group = device.group
    refusal = policy.holder_refusal(policy.Use.CERTIFICATE_ISSUANCE, tenant_status=device.tenant.status,
                                    device_status=device.status, credential_policy=group.credential_policy,
                                    tenant=device.tenant.slug, device=device.device_id, group=group.slug)  # fmt: skip
    if refusal is not None:
        raise refusal.exception()
    return group


def issue_for_key(
    *,
    actor: Actor,
    device: Device,
    public_key: ca.PublicKey,
    key_type: ca.KeyType,
    origin: str,
    announce: bool = True,
) -> Issued:
    """Issue and record a certificate for ``device``'s key.  ``announce=False`` leaves the
    announcement of the new grant to a caller that issues many at once."""
    group = _usable_group(device)
    tenant = device.tenant
    authority = active_ca(tenant)
    issuer = ca_issuer(authority)
    # Every certificate names its own credential id, so on Kafka it is its own principal.
    credential_id = new_certificate_id()
    subject = device_subject(tenant=tenant.slug, group=group.slug, device=device.device_id, credential_id=credential_id)
    cert = ca.issue_leaf(
        issuer=issuer,
        subject=subject,
        public_key=public_key,
        usage=ca.Usage.CLIENT,
        valid_days=group.cert_lifetime_days,
        uris=[device_uri(tenant=tenant.slug, group=group.slug, device=device.device_id)],
        crl_urls=[settings.SLUICE_RUNTIME.crl_url(crl_name(authority))],
    )
    with transaction.atomic():
        record = Certificate.objects.create(
            tenant=tenant,
            device=device,
            device_ref=device.device_id,
            ca=authority,
            serial=format(cert.serial_number, "x"),
            fingerprint_sha256=ca.fingerprint_sha256(cert),
            subject=cert.subject.rfc4514_string(),
            certificate_pem=ca.certificate_pem(cert).decode(),
            key_type=key_type.value,
            origin=origin,
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            kafka_principal=credential_principal(tenant=tenant.slug, group=group.slug, credential_id=credential_id),
        )
        audit_record(actor=actor, tenant=tenant, action="certificate.issue", obj=record,
                     after={"device": device.device_id, "serial": record.serial, "origin": origin,
                            "not_after": record.not_after.isoformat(), "key_type": key_type.value,
                            "kafka_principal": record.kafka_principal})  # fmt: skip
        if announce:
            # A grant too: a Kafka-direct group's new certificate gets its ACL (and quota).
            rights_changed(tenant_id=tenant.pk, certificates=[record.serial])
    return Issued(certificate=record, chain_pem=record.certificate_pem + authority.certificate_pem)


def _csr_key(csr_pem: bytes) -> tuple[ca.PublicKey, ca.KeyType]:
    """The public key of a CSR that proves possession of an acceptable key (its subject and
    extensions are ignored), or InvalidInput on ``/csr``."""
    try:
        csr = ca.load_csr(csr_pem)
        key_type = ca.check_csr(csr)
    except ca.CsrProblem as problem:
        raise InvalidInput(
            str(problem), fields=[{"pointer": "/csr", "code": problem.code, "message": str(problem)}]
        ) from None
    public_key = csr.public_key()
    assert isinstance(public_key, ca.PublicKey)
    return public_key, key_type


def _check_passphrase(passphrase: str) -> None:
    if len(passphrase) < MIN_PASSPHRASE:
        raise InvalidInput(
            f"The PKCS#12 passphrase needs at least {MIN_PASSPHRASE} characters.",
            fields=[
                {"pointer": "/passphrase", "code": "too_short", "message": f"At least {MIN_PASSPHRASE} characters."}
            ],
        )


def _with_key(issued: Issued, *, key: ca.PrivateKey, name: str, passphrase: str) -> Issued:
    """``issued`` with its server-generated key, as PEM and in a PKCS#12 bundle."""
    leaf = ca.load_certificate(issued.certificate.certificate_pem.encode())
    chain = [ca.load_certificate(issued.certificate.ca.certificate_pem.encode())]
    bundle = ca.pkcs12_bundle(name=name, key=key, certificate=leaf, chain=chain, passphrase=passphrase.encode())
    return Issued(certificate=issued.certificate, chain_pem=issued.chain_pem, key_pem=ca.private_key_pem(key).decode(),
                  pkcs12=bundle)  # fmt: skip


def certificate_issue_from_csr(*, actor: Actor, device: Device, csr_pem: bytes) -> Issued:
    """Sign a device's CSR: the key never leaves the device.  The CSR must prove possession
    of an acceptable key; its subject and extensions are ignored."""
    public_key, key_type = _csr_key(csr_pem)
    return issue_for_key(
        actor=actor, device=device, public_key=public_key, key_type=key_type, origin=Certificate.Origin.CSR
    )


def certificate_issue_generated(*, actor: Actor, device: Device, passphrase: str) -> Issued:
    """Generate the key here (the group's key type) and return it once, as PEM and as a
    PKCS#12 bundle encrypted with ``passphrase``."""
    _check_passphrase(passphrase)
    key_type = ca.KeyType(_usable_group(device).cert_key_type)
    key = ca.generate_key(key_type)
    issued = issue_for_key(actor=actor, device=device, public_key=key.public_key(), key_type=key_type,
                    origin=Certificate.Origin.GENERATED)  # fmt: skip
    return _with_key(issued, key=key, name=device.device_id, passphrase=passphrase)


# A consumer's certificate: not renewed by rotation (a backend gets a new one through the API
# before this ends; both work meanwhile).
CONSUMER_CERTIFICATE_DAYS = 365


def consumer_certificate_issue(
    *, actor: Actor, consumer: Consumer, csr_pem: bytes | None = None, passphrase: str | None = None
) -> Issued:
    """A client certificate from the tenant CA for ``consumer``'s own key (``csr_pem``) or a
    key generated here and returned once (``passphrase`` for its PKCS#12 bundle).  Its
    subject ``UID=<id>,CN=<consumer>,O=<tenant>`` maps to the principal
    ``User:<tenant>.consumers.<consumer>.<id>`` on Kafka, where it reads what the consumer
    is granted (``ingest.acls``); at nginx it reaches the tenant's schemas
    (``/registry/<tenant>/``) and nothing else."""
    tenant = consumer.tenant
    if not tenant.is_active:
        raise Conflict(f"Tenant '{tenant.slug}' is suspended.", code="tenant_suspended")
    if not consumer.is_active:
        raise Conflict(f"Consumer '{consumer.slug}' is disabled; enable it first.", code="consumer_disabled")
    if (csr_pem is None) == (passphrase is None):
        both = "Send either a CSR or a passphrase for a key generated here, not both."
        raise InvalidInput(both, fields=[{"pointer": "/csr", "code": "csr_or_passphrase", "message": both}])
    key: ca.PrivateKey | None = None
    if csr_pem is not None:
        public_key, key_type = _csr_key(csr_pem)
        origin = Certificate.Origin.CSR
    else:
        assert passphrase is not None
        _check_passphrase(passphrase)
        key_type = ca.KeyType.EC_P256
        key = ca.generate_key(key_type)
        public_key, origin = key.public_key(), Certificate.Origin.GENERATED
    authority = active_ca(tenant)
    credential_id = new_certificate_id()
    cert = ca.issue_leaf(
        issuer=ca_issuer(authority),
        subject=consumer_subject(tenant=tenant.slug, consumer=consumer.slug, credential_id=credential_id),
        public_key=public_key,
        usage=ca.Usage.CLIENT,
        valid_days=CONSUMER_CERTIFICATE_DAYS,
        uris=[f"urn:sluice:consumer:{tenant.slug}:{consumer.slug}"],
        crl_urls=[settings.SLUICE_RUNTIME.crl_url(crl_name(authority))],
    )
    principal = consumer_principal(tenant=tenant.slug, consumer=consumer.slug, credential_id=credential_id)
    with transaction.atomic():
        record = Certificate.objects.create(
            tenant=tenant, consumer=consumer, device_ref="", ca=authority, serial=format(cert.serial_number, "x"),
            fingerprint_sha256=ca.fingerprint_sha256(cert), subject=cert.subject.rfc4514_string(),
            certificate_pem=ca.certificate_pem(cert).decode(), key_type=key_type.value, origin=origin,
            not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc, kafka_principal=principal,
        )  # fmt: skip
        audit_record(actor=actor, tenant=tenant, action="certificate.issue", obj=record,
                     after={"consumer": consumer.slug, "serial": record.serial, "origin": origin,
                            "not_after": record.not_after.isoformat(), "key_type": key_type.value,
                            "kafka_principal": principal})  # fmt: skip
        rights_changed(tenant_id=tenant.pk, certificates=[record.serial])
    issued = Issued(certificate=record, chain_pem=record.certificate_pem + authority.certificate_pem)
    if key is None:
        return issued
    assert passphrase is not None
    return _with_key(issued, key=key, name=consumer.slug, passphrase=passphrase)


def consumer_certificates_revoke(*, actor: Actor, consumer: Consumer, reason: str) -> list[str]:
    """Revoke every still-usable certificate of ``consumer`` (it is deleted).  Call inside
    the caller's transaction."""
    usable = (Certificate.Status.ACTIVE, Certificate.Status.SUPERSEDED)
    certificates = list(Certificate.objects.filter(consumer=consumer, status__in=usable).select_related("ca", "tenant"))
    return _revoke_many(actor=actor, certificates=certificates, reason=reason, from_statuses=usable,
                        extra={"consumer": consumer.slug})  # fmt: skip


def certificate_revoke(*, actor: Actor, certificate: Certificate, reason: str = "unspecified") -> Certificate:
    if reason not in REASONS:
        raise InvalidInput(
            f"Unknown revocation reason '{reason}'.",
            fields=[{"pointer": "/reason", "code": "invalid_choice", "message": f"Use one of {sorted(REASONS)}."}],
        )
    with transaction.atomic():
        # Conditional update: of two concurrent revocations exactly one wins.
        changed = (
            Certificate.objects.filter(pk=certificate.pk)
            .exclude(status=Certificate.Status.REVOKED)
            .update(status=Certificate.Status.REVOKED, revoked_at=timezone.now(), revocation_reason=reason)
        )
        if not changed:
            raise Conflict(f"Certificate {certificate.serial} is already revoked.", code="already_revoked")
        certificate.refresh_from_db()
        audit_record(actor=actor, tenant=certificate.tenant, action="certificate.revoke", obj=certificate,
                     after={"serial": certificate.serial, "reason": reason})  # fmt: skip
        rights_changed(tenant_id=certificate.tenant_id, certificates=[certificate.serial])
        crl_publish(authority=certificate.ca)
    return certificate


def _revoke_many(
    *,
    actor: Actor,
    certificates: list[Certificate],
    reason: str,
    from_statuses: tuple[str, ...],
    extra: dict[str, str] | None = None,
) -> list[str]:
    """Revoke ``certificates`` with one CRL per CA (not one CRL and one nginx reload per
    certificate).  Each is a conditional update from ``from_statuses``: a row changed
    meanwhile (revoked, renewed) is left alone.  Returns the serials revoked."""
    revoked: list[str] = []
    by_ca: dict[int, list[Certificate]] = {}
    for certificate in certificates:
        by_ca.setdefault(certificate.ca_id, []).append(certificate)
    for batch in by_ca.values():
        with transaction.atomic():
            now = timezone.now()
            for certificate in batch:
                changed = Certificate.objects.filter(pk=certificate.pk, status__in=from_statuses).update(
                    status=Certificate.Status.REVOKED, revoked_at=now, revocation_reason=reason
                )
                if changed:
                    after = {"serial": certificate.serial, "reason": reason, **(extra or {})}
                    audit_record(actor=actor, tenant=certificate.tenant, action="certificate.revoke", obj=certificate,
                                 after=after)  # fmt: skip
                    revoked.append(certificate.serial)
            rights_changed(tenant_id=batch[0].tenant_id, certificates=[c.serial for c in batch])
            crl_publish(authority=batch[0].ca)
    return revoked


def certificates_retire(*, actor: Actor, certificates: list[Certificate]) -> list[str]:
    """Revoke superseded certificates whose overlap ended."""
    return _revoke_many(actor=actor, certificates=certificates, reason="superseded",
                        from_statuses=(Certificate.Status.SUPERSEDED,))  # fmt: skip


def device_certificates_revoke(*, actor: Actor, device: Device, reason: str) -> list[str]:
    """Revoke every still-usable certificate of ``device`` (active, or superseded and in its
    overlap).  Kafka authorizes per device group, so revocation is the only way to stop one
    device there: used when a device is disabled, moved to another group (its certificate
    names the old group) or deleted.  Call inside the caller's transaction."""
    usable = (Certificate.Status.ACTIVE, Certificate.Status.SUPERSEDED)
    certificates = list(Certificate.objects.filter(device=device, status__in=usable).select_related("ca", "tenant"))
    return _revoke_many(actor=actor, certificates=certificates, reason=reason, from_statuses=usable,
                        extra={"device": device.device_id})  # fmt: skip


def group_certificates_revoke(*, actor: Actor, group: DeviceGroup, reason: str) -> list[str]:
    """Revoke every still-usable certificate of the devices in ``group`` (its credential
    policy no longer admits certificates).  Call inside the caller's transaction."""
    usable = (Certificate.Status.ACTIVE, Certificate.Status.SUPERSEDED)
    certificates = list(
        Certificate.objects.filter(device__group=group, status__in=usable).select_related("ca", "tenant")
    )
    return _revoke_many(actor=actor, certificates=certificates, reason=reason, from_statuses=usable,
                        extra={"group": group.slug})  # fmt: skip


def tenant_cas_revoke(*, actor: Actor, tenant: Tenant) -> list[str]:
    """Revoke every issuing CA of ``tenant`` in the platform root's CRL (tenant deletion):
    every certificate they issued stops validating at once, on Kafka and at nginx alike."""
    now = timezone.now()
    authorities = list(selectors.authority_list(scope=Scope.of_tenant(tenant)))
    serials = [authority.serial for authority in authorities]
    anchors = [crl_name(authority) for authority in authorities]
    entries = [ca.Revoked(int(s, 16), now, x509.ReasonFlags.cessation_of_operation) for s in serials]
    audit_record(actor=actor, tenant=tenant, action="ca.revoke", object_type="certs.certificateauthority",
                 object_repr=f"{len(serials)} issuing CA(s)", after={"serials": serials})  # fmt: skip
    runtime = settings.SLUICE_RUNTIME
    transaction.on_commit(lambda: crl_files.publish_root_crl(runtime, ensure_root(runtime), revoke=entries,
                                                             drop_anchors=anchors))  # fmt: skip
    return serials


RENEWAL_OVERLAP = dt.timedelta(hours=24)


def _presented_may_act(use: str, presented: Certificate, *, now: dt.datetime) -> None:
    """What EST asks of the certificate a device presents (``tenants.policy``): the
    certificate itself, that its device still exists, then its device and tenant."""
    refusal = policy.certificate_refusal(use, status=presented.status, not_after=presented.not_after,
                                         overlap_until=presented.overlap_until, now=now)  # fmt: skip
    if refusal is not None:
        raise refusal.exception()
    device = presented.device
    if device is None:
        if presented.consumer_id is not None:
            raise PermissionDenied("A consumer's certificate is not renewed over EST; issue a new one through the API.",
                                   code="not_a_device_certificate")  # fmt: skip
        raise PermissionDenied("The certificate's device no longer exists.", code="device_gone")
    refusal = policy.holder_refusal(use, tenant_status=device.tenant.status, device_status=device.status,
                                    credential_policy=device.group.credential_policy, tenant=device.tenant.slug,
                                    device=device.device_id, group=device.group.slug)  # fmt: skip
    if refusal is not None:
        raise refusal.exception()


def certificate_renew(*, presented: Certificate, csr_pem: bytes) -> Issued:
    """EST re-enrollment (RFC 7030 §4.2.2): a device proves itself with its current, valid
    certificate and gets a new one for the key in its CSR.  The old one stays valid for
    ``RENEWAL_OVERLAP`` and is then retired by the rotation task."""
    now = timezone.now()
    _presented_may_act(policy.Use.EST_RENEWAL, presented, now=now)
    device = presented.device
    assert device is not None  # _presented_may_act refused a certificate without one
    try:
        csr = ca.load_csr(csr_pem)
        key_type = ca.check_csr(csr)
    except ca.CsrProblem as problem:
        raise InvalidInput(str(problem), fields=[{"pointer": "/csr", "code": problem.code, "message": str(problem)}],
                           code=problem.code) from None  # fmt: skip
    public_key = csr.public_key()
    assert isinstance(public_key, ca.PublicKey)
    actor = Actor(user=None, label=f"device:{device.device_id}")
    with transaction.atomic():
        issued = issue_for_key(actor=actor, device=device, public_key=public_key, key_type=key_type,
                               origin=Certificate.Origin.EST_RENEWAL)  # fmt: skip
        # Conditional on the row still being ACTIVE: of two concurrent renewals with the same
        # certificate one wins, the other rolls back its issuance and gets a 409.
        changed = Certificate.objects.filter(pk=presented.pk, status=Certificate.Status.ACTIVE).update(
            status=Certificate.Status.SUPERSEDED, superseded_by=issued.certificate, overlap_until=now + RENEWAL_OVERLAP
        )
        if not changed:
            raise Conflict(
                "This certificate was renewed or revoked meanwhile; renew with the newest one.",
                code="certificate_superseded",
            )
        rights_changed(tenant_id=presented.tenant_id, certificates=[presented.serial])
        audit_record(actor=actor, tenant=device.tenant, action="certificate.renew", obj=issued.certificate,
                     after={"old_serial": presented.serial, "new_serial": issued.certificate.serial,
                            "old_valid_until": (now + RENEWAL_OVERLAP).isoformat()})  # fmt: skip
    return issued


def certificate_collect_successor(*, presented: Certificate) -> tuple[Certificate, str]:
    """Hand a device the successor rotation issued for it, with its key, exactly once
    (EST serverkeygen).  The stored encrypted key is wiped in the same transaction."""
    _presented_may_act(policy.Use.EST_COLLECT, presented, now=timezone.now())
    with transaction.atomic():
        successor = (
            Certificate.objects.select_for_update()
            # pk=None (no successor) matches no row: the NotFound below answers it.
            .filter(pk=presented.superseded_by_id, status=Certificate.Status.ACTIVE)  # type: ignore[misc]
            .exclude(pending_key_encrypted="")
            .first()
        )
        if successor is None:
            raise NotFound("No renewed certificate is waiting for this one.", code="no_pending_certificate")
        rt = settings.SLUICE_RUNTIME
        key = ca.load_private_key(successor.pending_key_encrypted.encode(), rt.key_encryption_key)
        Certificate.objects.filter(pk=successor.pk).update(pending_key_encrypted="")
        audit_record(actor=Actor(user=None, label=f"device:{presented.device_ref}"), tenant=presented.tenant,
                     action="certificate.collect", obj=successor, after={"serial": successor.serial})  # fmt: skip
    return successor, ca.private_key_pem(key).decode()


BULK_MAX = 1000


def certificates_issue_bulk(*, actor: Actor, tenant: Tenant, items: list[dict[str, str]]) -> list[Issued]:
    """Issue for many devices in one call, all or nothing: every item is checked first
    (device exists in ``tenant``, may hold a certificate, CSR acceptable) and every problem is
    reported with its item's JSON pointer; only a clean batch is issued.  An item is
    ``{"device_id", "csr"}`` or ``{"device_id"}`` with ``generate`` (key returned once)."""
    if len(items) > BULK_MAX:
        raise PayloadTooLarge(f"A bulk issuance takes at most {BULK_MAX} devices; this one has {len(items)}.")
    if not items:
        raise InvalidInput("The request names no devices.")
    named = [str(i.get("device_id", "")) for i in items]
    found = device_selectors.device_list(scope=Scope.of_tenant(tenant)).filter(device_id__in=named)
    devices = {d.device_id: d for d in found}
    errors: list[dict[str, str]] = []
    plans: list[tuple[Device, ca.PublicKey | None, ca.KeyType]] = []
    seen: set[str] = set()
    for index, item in enumerate(items):
        pointer = f"/items/{index}"
        device = devices.get(str(item.get("device_id", "")))
        if device is None:
            errors.append({"pointer": f"{pointer}/device_id", "code": "does_not_exist", "message": "No such device."})
            continue
        if device.device_id in seen:
            errors.append({"pointer": f"{pointer}/device_id", "code": "duplicate", "message": "Named twice."})
            continue
        seen.add(device.device_id)
        try:
            _usable_group(device)
        except InvalidInput as error:
            errors.append({"pointer": f"{pointer}/device_id", "code": "not_eligible", "message": error.message})
            continue
        if item.get("csr"):
            try:
                csr = ca.load_csr(str(item["csr"]).encode())
                key_type = ca.check_csr(csr)
            except ca.CsrProblem as problem:
                errors.append({"pointer": f"{pointer}/csr", "code": problem.code, "message": str(problem)})
                continue
            csr_key = csr.public_key()
            assert isinstance(csr_key, ca.PublicKey)
            plans.append((device, csr_key, key_type))
        else:
            plans.append((device, None, ca.KeyType(device.group.cert_key_type)))
    if errors:
        bad = len({e["pointer"].split("/")[2] for e in errors})
        raise InvalidInput(f"{bad} item(s) are invalid; nothing was issued.", fields=errors)
    results: list[Issued] = []
    with transaction.atomic():
        for device, public_key, key_type in plans:
            if public_key is not None:
                results.append(issue_for_key(actor=actor, device=device, public_key=public_key, key_type=key_type,
                                             origin=Certificate.Origin.CSR, announce=False))  # fmt: skip
            else:
                key = ca.generate_key(key_type)
                issued = issue_for_key(actor=actor, device=device, public_key=key.public_key(), key_type=key_type,
                                       origin=Certificate.Origin.GENERATED, announce=False)  # fmt: skip
                results.append(Issued(certificate=issued.certificate, chain_pem=issued.chain_pem,
                                      key_pem=ca.private_key_pem(key).decode()))  # fmt: skip
        # One announcement for the batch: one Kafka sync, not one per certificate.
        rights_changed(tenant_id=tenant.pk, certificates=[r.certificate.serial for r in results])
    return results


def certificate_renew_generated(*, actor: Actor, certificate: Certificate) -> Issued:
    """Renew an active device certificate from the console: a successor for a key generated
    here (the group's key type), returned once.  The old certificate is superseded and stays
    valid for ``RENEWAL_OVERLAP`` (then rotation retires it), as after an EST renewal."""
    device = certificate.device
    if device is None or certificate.status != Certificate.Status.ACTIVE:
        raise Conflict("Only a device's active certificate can be renewed.", code="certificate_not_renewable")
    key_type = ca.KeyType(_usable_group(device).cert_key_type)
    key = ca.generate_key(key_type)
    now = timezone.now()
    with transaction.atomic():
        issued = issue_for_key(actor=actor, device=device, public_key=key.public_key(), key_type=key_type,
                               origin=Certificate.Origin.GENERATED)  # fmt: skip
        changed = Certificate.objects.filter(pk=certificate.pk, status=Certificate.Status.ACTIVE).update(
            status=Certificate.Status.SUPERSEDED, superseded_by=issued.certificate, overlap_until=now + RENEWAL_OVERLAP
        )
        if not changed:
            raise Conflict("This certificate was renewed or revoked meanwhile.", code="certificate_superseded")
        rights_changed(tenant_id=certificate.tenant_id, certificates=[certificate.serial])
        audit_record(actor=actor, tenant=device.tenant, action="certificate.renew", obj=issued.certificate,
                     after={"old_serial": certificate.serial, "new_serial": issued.certificate.serial,
                            "old_valid_until": (now + RENEWAL_OVERLAP).isoformat(), "origin": "console"})  # fmt: skip
    return Issued(certificate=issued.certificate, chain_pem=issued.chain_pem, key_pem=ca.private_key_pem(key).decode())
