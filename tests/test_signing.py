"""Standard Webhooks signing: the spec's known answer, and the reference library verifies us."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from service.delivery.signing import secret_key, sign, webhook_headers

SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def test_known_answer_from_the_spec() -> None:
    signature = sign(
        [secret_key(SPEC_SECRET)],
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        '{"test": 2432232314}',
    )
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_reference_library_verifies_each_of_two_secrets() -> None:
    second = "whsec_" + "c2Vjb25kLXNlY3JldC1mb3Itcm90YXRpb24="
    body = '{"id":"evt_1","type":"assignment.completed"}'
    ts = int(datetime.now(UTC).timestamp())
    headers = webhook_headers(
        [secret_key(SPEC_SECRET), secret_key(second)], "evt_1", ts, body, "lms-webhooks/test"
    )
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (SPEC_SECRET, second):
        assert Webhook(secret).verify(body, headers) == {
            "id": "evt_1",
            "type": "assignment.completed",
        }
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + "d3JvbmctdGhpcmQtc2VjcmV0").verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(SPEC_SECRET).verify(body.replace("completed", "created"), headers)
