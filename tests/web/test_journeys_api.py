"""The kit's journey machine through the reference HTTP API (``adapters/asgi``): every step is a
request, every refusal a problem document whose ``code`` says which; the invariants are the
kit's, checked on the world behind the app."""

from __future__ import annotations

from typing import Any

from starlette.testclient import TestClient

from email_change import AddressForm
from email_change.adapters.asgi import WebSettings, create_app
from email_change.testing import World
from email_change.testing.journeys import Driver, Journeys, Outcome, journey_settings
from tests.web.asgi_support import header_insured

P = "/api/v1/procedures"


class ApiDriver:
    """A :class:`~email_change.testing.journeys.Driver` over the JSON API."""

    def __init__(self, client: TestClient) -> None:
        self.client = client

    def _post(
        self, insured_id: str | None, path: str, body: dict[str, Any] | None = None
    ) -> Outcome:
        headers = {} if insured_id is None else {"x-test-insured": insured_id}
        response = self.client.post(path, json=body, headers=headers)
        data = response.json()
        if response.status_code >= 400:
            return Outcome(ok=False, error=data["code"], texts=(response.text,))
        return Outcome(ok=True, procedure_id=data.get("procedure_id"), texts=(response.text,))

    def start(self, insured_id: str) -> Outcome:
        return self._post(insured_id, P, {"channel": "website", "locale": "fr"})

    def resend_code(self, insured_id: str, procedure_id: str) -> Outcome:
        return self._post(insured_id, f"{P}/{procedure_id}/code/resend")

    def submit_code(self, insured_id: str, procedure_id: str, code: str) -> Outcome:
        return self._post(insured_id, f"{P}/{procedure_id}/code", {"code": code})

    def submit_serial(self, insured_id: str, procedure_id: str, serial: str) -> Outcome:
        return self._post(insured_id, f"{P}/{procedure_id}/serial", {"serial": serial})

    def submit_new_address(self, insured_id: str, procedure_id: str, form: AddressForm) -> Outcome:
        body = {
            "new_address": form.new_address,
            "confirmation": form.confirmation,
            "general_information": form.general_information,
            "studies_and_research": form.studies_and_research,
            "wording_version": form.wording_version,
            "channel": form.channel.value,
        }
        return self._post(insured_id, f"{P}/{procedure_id}/address", body)

    def resend_confirmation(self, insured_id: str) -> Outcome:
        return self._post(insured_id, "/api/v1/confirmation/resend")

    def cancel(self, insured_id: str, procedure_id: str) -> Outcome:
        return self._post(insured_id, f"{P}/{procedure_id}/cancel")

    def confirm(self, token: str) -> Outcome:
        return self._post(None, "/api/v1/links/confirm", {"token": token})

    def revert(self, token: str) -> Outcome:
        return self._post(None, "/api/v1/links/revert", {"token": token})


class ApiJourneys(Journeys):
    def make_driver(self, world: World) -> Driver:
        settings = WebSettings(mail_settings=world.mail_settings, secret_key="journeys-key-" * 4)
        app = create_app(world.service, settings=settings, current_insured=header_insured)
        # The app serves the host its links point to (the world's https://ameli.example).
        base = world.mail_settings.confirm_url.rsplit("/", 1)[0]
        self.client = TestClient(app, base_url=base).__enter__()
        return ApiDriver(self.client)

    def close_world(self, world: World) -> None:
        self.client.__exit__(None, None, None)
        super().close_world(world)


TestApiJourneys = ApiJourneys.TestCase
TestApiJourneys.settings = journey_settings(max_examples=20, steps=30)
